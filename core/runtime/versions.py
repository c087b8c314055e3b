"""Teacher versions: which EMA update the teacher a mini-batch reads must have had, and the
snapshot a stale teacher needs to resume bit for bit.

Version k of the teacher is its weights after the EMA update of optimizer step k (version 0:
the initial weights). Mini-batch b reads version ``max(0, b - staleness)`` (ARCHITECTURE.md,
"The version rule"). A schedule with staleness L runs every teacher forward of mini-batch b + L
before the update of step b, so it needs no copy of the teacher while it runs; but a run
resumed at step ``start`` must serve its first L mini-batches with versions ``start - L ..
start - 1``, which the checkpoint therefore holds: the teacher's states just before the last L
updates of the checkpointed steps (:meth:`TeacherVersions.before_update`; for L = 1 the one
``previous_teacher`` older checkpoints hold too).
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
        # version -> the teacher's state at that version, kept for the checkpoints that follow
        self.previous_states: dict[int, dict[str, torch.Tensor]] = {}
        self._previous_modules: dict[int, nn.Module] = {}
        self._resume_start = 0

    @property
    def previous_state(self) -> dict[str, torch.Tensor] | None:
        """The teacher one version back, where kept (staleness 1's one snapshot)."""
        return self.previous_states.get(self.version - 1)

    @property
    def version(self) -> int:
        return self.current.version

    def start(self, teacher: nn.Module, start: int) -> None:
        """Check the teacher before a run from step ``start``, and rebuild the older versions a
        resumed stale run's first mini-batches read.

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
        self._previous_modules = {}
        for version in range(max(0, start - self.staleness), start):
            if version not in self.previous_states:
                raise ValueError(
                    f"resuming at step {start} with a teacher {self.staleness} version(s) stale needs the "
                    f"teacher of version {version} (stored in its checkpoints); this state has none"
                )
            module = copy.deepcopy(teacher)
            module.load_state_dict(self.previous_states[version])
            self._previous_modules[version] = module

    def teacher_for(self, batch: int, teacher: nn.Module) -> nn.Module:
        """The module that serves ``batch``'s teacher forwards (checked against the rule).

        Raises:
            RuntimeError: if the teacher is not at the version the schedule promises.
        """
        if not self.ema:
            return teacher
        want = max(0, batch - self.staleness)
        if want < self.version and want in self._previous_modules:
            return self._previous_modules[want]  # a resumed stale run's first mini-batches
        self.current.check(batch, self.staleness, self.rank)
        return teacher

    def before_update(self, step: int, teacher: nn.Module) -> None:
        """Keep the teacher as it is now (its current version) if a checkpoint follows one of
        steps ``step .. step + L - 1`` (stale teachers only), and drop the versions no later
        checkpoint needs."""
        if not (self.ema and self.staleness):
            return
        floor = self.version + 1 - self.staleness
        self.previous_states = {v: s for v, s in self.previous_states.items() if v >= floor}
        if any(self.keep_at(later) for later in range(step, step + self.staleness)):
            self.previous_states[self.version] = {
                k: v.detach().clone() for k, v in teacher.state_dict().items()
            }

    def advance(self, step: int) -> None:
        """Step ``step`` is done (updated or skipped): one version more; a resumed run's older
        teacher is no longer needed once its first step is done."""
        if self.ema:
            self.current.version += 1
        if step >= self._resume_start:  # older versions serve only the first L mini-batches
            self._previous_modules = {
                v: m for v, m in self._previous_modules.items() if v >= self.version - self.staleness
            }

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        floor = self.version - self.staleness
        return {
            "teacher_version": self.version if self.ema else None,
            "previous_teacher": self.previous_state,
            "previous_teachers": {v: s for v, s in self.previous_states.items() if v >= floor},
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (a checkpoint with only ``previous_teacher`` holds version - 1)."""
        if state.get("teacher_version") is not None:
            self.current.version = state["teacher_version"]
        kept = state.get("previous_teachers")
        if kept is None and state.get("previous_teacher") is not None:
            kept = {self.version - 1: state["previous_teacher"]}
        self.previous_states = dict(kept or {})
