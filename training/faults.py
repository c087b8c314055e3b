"""A test and demonstration hook: make a rank die, hang, or the loss turn NaN at a chosen step,
to show that nothing is lost and nothing hangs. Set ``TSPIPE_FAULT`` to ``kill:STEP:RANK``,
``hang:STEP:RANK`` or ``nan:STEP``; it never comes from a config. A fault strikes the first
attempt only: a group that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0) runs on."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from core.task import Task

VARIABLE = "TSPIPE_FAULT"
KINDS = ("kill", "hang", "nan")


class Faults:
    """The fault the environment asks for (none without ``TSPIPE_FAULT``).

    Raises:
        ValueError: for a malformed spec.
    """

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(VARIABLE, "") if spec is None else spec
        self.kind, self.step, self.rank = "", -1, -1
        if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
            return
        parts = spec.split(":")
        try:
            if parts[0] not in KINDS:
                raise ValueError
            self.kind, self.step = parts[0], int(parts[1])
            self.rank = int(parts[2]) if len(parts) > 2 else -1
        except (ValueError, IndexError):
            raise ValueError(
                f"{VARIABLE} must be kill:STEP:RANK, hang:STEP:RANK or nan:STEP, got {spec!r}"
            ) from None

    def before_step(self, step: int, rank: int, run_dir: Path) -> None:
        """At the start of step ``step``: die or hang if this is the rank and step asked for."""
        if step != self.step or rank != self.rank or self.kind not in ("kill", "hang"):
            return
        (run_dir / "fault.json").write_text(
            json.dumps({"fault": self.kind, "step": step, "rank": rank, "time": time.time()})
        )
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        signal.pause()  # hang until the launcher stops us

    def wrap(self, task: Task) -> Task:
        """Make ``task``'s loss non-finite at the faulty step (``nan``)."""
        if self.kind != "nan":
            return task
        context_fn, loss_fn = task.loss_context, task.loss

        def loss_context(batch: Any, step: int) -> Any:
            return {"inner": context_fn(batch, step), "step": step}

        def loss(student: Any, teacher: Any, context: Any) -> dict[str, torch.Tensor]:
            out = loss_fn(student, teacher, context["inner"])
            if context["step"] == self.step:
                out = {**out, "loss": out["loss"] * float("nan")}
            return out

        task.loss_context, task.loss = loss_context, loss  # type: ignore[method-assign]
        if task.has_microbatch_loss:
            micro = task.microbatch_loss

            def microbatch_loss(view, microbatch, microbatches, student, teacher, context):  # noqa: ANN001
                term = micro(view, microbatch, microbatches, student, teacher, context["inner"])
                return term * float("nan") if context["step"] == self.step else term

            task.microbatch_loss = microbatch_loss  # type: ignore[method-assign]
        return task
