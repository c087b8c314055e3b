"""The symmetric relaxation, for an accuracy ablation only (``--student-delay K``): the
student's gradients are applied K optimizer steps late, as an asynchronous pipeline without
weight stashing would apply them, on top of whatever the schedule does to the teacher.

TSPipe's relaxation delays only the teacher (the EMA serving a mini-batch is one version
older); its paper reports that delaying the student's update as well costs accuracy while the
teacher-only delay does not (Lim et al., ICML 2022). This option exists to measure that contrast
beside ``sync`` and ``tspipe`` (``make accuracy-byol``); it is not a schedule and never a
speed-up. It wraps the method's optimizer, so the engine and its timed path are untouched.

Rule: optimizer step s applies the gradient computed at step s - K (clipped as it was then,
under the global-norm clip of its own step); steps 0 .. K-1 apply nothing (the parameters keep
their initial values; the learning-rate schedule still advances). A step the NaN guard skips
does not call the optimizer, so it neither queues nor applies a gradient. The K queued gradients
are part of the optimizer's ``state_dict``, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]
STATE_KEY = "delayed_gradients"


class DelayedGradients:
    """Applies an optimizer's gradients ``delay`` steps late (hooks on the optimizer itself).

    Args:
        optimizer: the optimizer whose steps are delayed; keeps working as before otherwise.
        delay: K >= 1.

    Raises:
        ValueError: for a delay below 1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, delay: int) -> None:
        if delay < 1:
            raise ValueError(f"student delay must be >= 1 steps, got {delay}")
        self.optimizer, self.delay = optimizer, delay
        self.queue: deque[list[torch.Tensor | None]] = deque()
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)

    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Queue this step's gradients; hand the optimizer those of K steps ago (None: no update
        of that parameter, as for a parameter without a gradient)."""
        params = self.params()
        self.queue.append([p.grad for p in params])
        late = self.queue.popleft() if len(self.queue) > self.delay else [None] * len(params)
        for p, grad in zip(params, late):
            p.grad = grad

    def _save(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state[STATE_KEY] = {"delay": self.delay, "queue": [list(grads) for grads in self.queue]}
        return state

    def _load(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        saved = state.pop(STATE_KEY, None)
        if saved is None or saved["delay"] != self.delay:
            found = "none" if saved is None else saved["delay"]
            raise ValueError(
                f"cannot resume: the checkpoint's student delay is {found}, this run's {self.delay}"
            )
        params = self.params()
        if any(len(grads) != len(params) for grads in saved["queue"]):
            raise ValueError(
                "cannot resume: the checkpoint's delayed gradients are for another set of parameters"
            )
        self.queue = deque(
            [None if g is None else g.to(p.device) for p, g in zip(params, grads)] for grads in saved["queue"]
        )
        return state


def delayed(factory: OptimizerFactory, delay: int) -> OptimizerFactory:
    """An optimizer factory whose optimizers apply each gradient ``delay`` steps late (0: the
    factory itself)."""
    if delay == 0:
        return factory

    def build(named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        optimizer = factory(named)
        optimizer.delayed_gradients = DelayedGradients(optimizer, delay)  # kept alive with it
        return optimizer

    return build
