"""Teacher rules: a frozen teacher, or an EMA of the student with a cosine momentum schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``.

    Returns:
        ``base`` at step 0, rising to ``final`` at ``total_steps`` (and staying there).
    """
    if total_steps <= 0:
        return base
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@dataclass(frozen=True)
class TeacherRule:
    """How the teacher changes during training.

    Attributes:
        kind: ``"frozen"`` (a fixed, pre-trained teacher) or ``"ema"`` (an exponential moving
            average of the student, updated after every optimizer step).
        base_momentum: EMA momentum at step 0.
        final_momentum: EMA momentum at ``total_steps``.
        total_steps: length of the cosine schedule; 0 keeps the momentum at ``base_momentum``.
    """

    kind: str = "frozen"
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    total_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("frozen", "ema"):
            raise ValueError(f"teacher kind must be 'frozen' or 'ema', got {self.kind!r}")
        for name in ("base_momentum", "final_momentum"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {self.total_steps}")

    @classmethod
    def frozen(cls) -> TeacherRule:
        return cls("frozen")

    @classmethod
    def ema(cls, base_momentum: float, total_steps: int, final_momentum: float = 1.0) -> TeacherRule:
        return cls("ema", base_momentum, final_momentum, total_steps)

    def momentum(self, step: int) -> float:
        """Momentum of the update after optimizer step ``step`` (0-based)."""
        return cosine_momentum(step, self.total_steps, self.base_momentum, self.final_momentum)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` on parameters and floating
    buffers (BatchNorm running statistics), with fused ``torch._foreach_*`` kernels; integer
    buffers (``num_batches_tracked``) are copied.

    Entries are matched by ``state_dict`` name; the student may have more (a predictor the
    teacher lacks).

    Raises:
        ValueError: if a teacher parameter or buffer has no student counterpart.
    """
    # state_dict: parameters and persistent buffers (not deferred BatchNorm's scratch sums)
    s_state = student.state_dict(keep_vars=True)
    t_named = list(teacher.state_dict(keep_vars=True).items())
    missing = [n for n, _ in t_named if n not in s_state]
    if missing:
        raise ValueError(
            f"EMA teacher has {missing[0]!r} which the student lacks; teacher and student must match"
        )
    targets, sources = [], []
    for name, t in t_named:
        s = s_state[name]
        if t.is_floating_point():
            targets.append(t)
            sources.append(s.detach())
        else:
            t.copy_(s)
    if targets:
        # lerp: t + (1 - m) (s - t) = m t + (1 - m) s
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)


@dataclass
class TeacherVersion:
    """Bookkeeping of the teacher version a stage holds: the number of EMA updates applied.

    The runtime checks, before each teacher forward, that the version matches the schedule's
    promise (``max(0, batch - staleness)``, ARCHITECTURE.md "The version rule").
    """

    version: int = 0

    def check(self, batch: int, staleness: int, stage: int) -> None:
        """Raise RuntimeError if the teacher is not at the version batch ``batch`` must read."""
        want = max(0, batch - staleness)
        if self.version != want:
            raise RuntimeError(
                f"stage {stage}: teacher forward of batch {batch} found teacher version "
                f"{self.version}, the schedule promises {want} (staleness {staleness})"
            )
