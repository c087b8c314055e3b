"""Teacher versions: which EMA update the teacher a mini-batch reads must have had, and the
snapshot a stale teacher needs to resume bit for bit.

Version k of the teacher is its weights after the EMA update of optimizer step k (version 0:
the initial weights). Mini-batch b reads version ``max(0, b - staleness)`` (ARCHITECTURE.md,
"The version rule"). A schedule with staleness 1 runs every teacher forward of mini-batch b + 1
before the update of step b, so it needs no copy of the teacher while it runs; but a run
resumed at step ``start`` must serve its first mini-batch with version ``start - 1``, which the
checkpoint therefore holds: the teacher's state just before the last update of the checkpointed
steps (:meth:`TeacherVersions.before_update`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.momentum import TeacherVersion


class TeacherVersions:
    """The version bookkeeping of one stage's teacher partition.

    Args:
        ema: whether the teacher is an EMA of the student (a frozen one has one version).
        staleness: versions the teacher lags behind the synchronous rule.
        rank: for error messages.
    """

    def __init__(self, ema: bool, staleness: int, rank: int = 0) -> None:
        self.ema, self.staleness, self.rank = ema, staleness, rank
        self.current = TeacherVersion()
        # which steps a checkpoint follows: the teacher before their update is kept for resume
        self.keep_at: Callable[[int], bool] = lambda step: False
        self.previous_state: dict[str, torch.Tensor] | None = None
        self._previous_module: nn.Module | None = None
        self._resume_start = 0

    @property
    def version(self) -> int:
        return self.current.version

    def start(self, teacher: nn.Module, start: int) -> None:
        """Check the teacher before a run from step ``start``, and rebuild the older version a
        resumed stale run's first mini-batch reads.

        Raises:
            ValueError: if the teacher has had a different number of updates, or a stale
                teacher's resume lacks the snapshot.
        """
        self._resume_start = start
        if not self.ema:
            return
        if self.version != start:
            raise ValueError(
                f"the teacher has had {self.version} updates but the run starts at step "
                f"{start}; load the checkpoint of step {start} first"
            )
        if self.staleness and start > 0:
            if self.previous_state is None:
                raise ValueError(
                    f"resuming at step {start} with a stale teacher needs the teacher of the step before "
                    "(stored in its checkpoints); this state has none"
                )
            self._previous_module = copy.deepcopy(teacher)
            self._previous_module.load_state_dict(self.previous_state)

    def teacher_for(self, batch: int, teacher: nn.Module) -> nn.Module:
        """The module that serves ``batch``'s teacher forwards (checked against the rule).

        Raises:
            RuntimeError: if the teacher is not at the version the schedule promises.
        """
        if not self.ema:
            return teacher
        want = max(0, batch - self.staleness)
        if want == self.version - 1 and self._previous_module is not None:
            return self._previous_module  # a resumed stale run's first mini-batch
        self.current.check(batch, self.staleness, self.rank)
        return teacher

    def before_update(self, step: int, teacher: nn.Module) -> None:
        """Keep the teacher as it is now if a checkpoint follows ``step`` (stale teachers only)."""
        if self.ema and self.staleness and self.keep_at(step):
            self.previous_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}

    def advance(self, step: int) -> None:
        """Step ``step`` is done (updated or skipped): one version more; a resumed run's older
        teacher is no longer needed once its first step is done."""
        if self.ema:
            self.current.version += 1
        if self._previous_module is not None and step >= self._resume_start:
            self._previous_module = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        return {
            "teacher_version": self.version if self.ema else None,
            "previous_teacher": self.previous_state,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        if state.get("teacher_version") is not None:
            self.current.version = state["teacher_version"]
        self.previous_state = state.get("previous_teacher")
