"""The end of a training step, one implementation for every runner: the NaN guard, global
gradient clipping, the optimizer and scheduler step, the deferred BatchNorm commit and the EMA
teacher update."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from core.batchnorm import commit_all, discard_statistics
from core.momentum import ema_update_
from core.runtime.transport import Transport
from core.runtime.versions import TeacherVersions
from core.task import Task

Reduce = Callable[[torch.Tensor, str], None]


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """True when every gradient is finite (one fused norm per parameter list)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def clip_grad_norm_across_stages(
    parameters: Iterable[nn.Parameter], max_norm: float, device: torch.device, reduce: Reduce | None = None
) -> float:
    """Clip gradients to a global norm over every stage's parameters, like single-process
    ``torch.nn.utils.clip_grad_norm_`` on the whole model: squared norms are summed over the
    stages with ``reduce`` (in place, ``"sum"``) first.

    Returns:
        The global gradient norm before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = [n.double() ** 2 for n in torch._foreach_norm(grads)] if grads else []
    total = (torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float64)).to(device)
    if reduce is not None:
        reduce(total, "sum")
    total_norm = total.sqrt()
    if grads:
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(device=grads[0].device, dtype=grads[0].dtype))
    return float(total_norm)


class EndOfStep:
    """What happens once a step's gradients are complete, in this order: the guard (a
    non-finite loss or gradient stops the run before the update, or skips the step on every
    rank, counted), clipping, the optimizer and scheduler steps, the BatchNorm commit, the
    teacher update and its version.

    Args:
        task: for the teacher rule.
        student, teacher: this rank's modules.
        optimizer, scheduler: of the student (scheduler may be None).
        nan_guard: ``stop``, ``skip`` or ``off``.
        clip: clips the gradients to the global norm, or None.
        device: where the skip flag lives.
        agree: a transport whose ranks must agree on a skip (ranks with different gradients),
            or None (every rank already holds the same gradients, or there is one rank).
        versions: the teacher's version bookkeeping (None: no versions kept).
        distributed_bn: sum BatchNorm statistics over ranks before committing (data parallel).
        bn_group: the ranks ``distributed_bn`` sums over (None: all).
        rank: for messages.
    """

    def __init__(
        self,
        task: Task,
        student: nn.Module,
        teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        nan_guard: str,
        clip: Callable[[], Any] | None,
        device: torch.device,
        agree: Transport | None = None,
        versions: TeacherVersions | None = None,
        distributed_bn: bool = False,
        rank: int = 0,
        bn_group: Any = None,
    ) -> None:
        self.task, self.student, self.teacher = task, student, teacher
        self.optimizer, self.scheduler = optimizer, scheduler
        self.nan_guard, self.clip, self.device = nan_guard, clip, device
        self.agree, self.versions = agree, versions
        self.distributed_bn, self.rank, self.bn_group = distributed_bn, rank, bn_group
        self.skipped_steps = 0

    def __call__(self, step: int, loss: torch.Tensor | None = None) -> bool:
        """End step ``step`` (``loss``: this rank's loss, if it has one).

        Returns:
            True if the step was skipped.

        Raises:
            FloatingPointError: on a non-finite loss or gradient with ``nan_guard=stop``.
        """
        bad = False
        if self.nan_guard != "off":
            bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
            bad = bad or not grads_finite(self.student.parameters())
            if bad and self.nan_guard == "stop":
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {step} on rank {self.rank}; stopped before the "
                    "step (the last checkpoint is untouched; nan_guard=skip skips such steps instead)"
                )
            if self.nan_guard == "skip" and self.agree is not None:
                flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
                self.agree.all_reduce(flag, "max")
                bad = bool(flag.item())
        if self.versions is not None and self.task.teacher_rule.kind == "ema":
            # the version this step replaces, kept for a checkpoint (a skipped step replaces it too)
            self.versions.before_update(step, self.teacher)
        if bad:  # no update of student, statistics or teacher; the step still counts
            self.optimizer.zero_grad(set_to_none=True)
            discard_statistics(self.student)
            self.skipped_steps += 1
        else:
            if self.clip is not None:
                self.clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            commit_all(self.student, self.bn_group, distributed=self.distributed_bn)
            if self.task.teacher_rule.kind == "ema":
                ema_update_(self.teacher, self.student, self.task.teacher_rule.momentum(step))
        if self.versions is not None:
            self.versions.advance(step)
        return bad
