"""Memory of a schedule on each stage: how many units' activations a stage holds at its peak,
and from per-unit sizes, its peak bytes.

A stage holds a unit's student activations from its forward ``SF`` until its backward frees
them: a whole backward (or stage 0's input half, which is its whole backward) frees its piece
at once; a split backward keeps the graph through ``SB`` and frees it at ``SW``. The last stage
also holds the teacher outputs of a mini-batch from their forward until the loss that uses the
last of them. Order alone decides this, so the count is exact for a schedule; bytes are as good
as the per-unit sizes they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.action import Op
from core.schedules import Schedule


@dataclass(frozen=True)
class StagePeak:
    """Peak of one stage.

    Attributes:
        student_units: units of student activations alive at the peak of bytes (pieces count as
            fractions of a unit).
        teacher_units: teacher outputs held for the loss at that moment (last stage only).
        bytes: ``student_units x activation bytes + teacher_units x teacher bytes + static``.
    """

    student_units: float
    teacher_units: int
    bytes: float


def stage_peaks(
    schedule: Schedule,
    activation_bytes: Sequence[float] | None = None,
    teacher_bytes: float = 0.0,
    static_bytes: Sequence[float] | None = None,
) -> list[StagePeak]:
    """Each stage's peak memory over the schedule's window.

    Args:
        schedule: a built schedule.
        activation_bytes: stored student activations of one unit, per stage (default 1: the
            peak then counts units).
        teacher_bytes: one unit's teacher output on the last stage.
        static_bytes: parameters, gradients and optimizer state, per stage (default 0).

    Returns:
        One :class:`StagePeak` per stage.
    """
    n = schedule.stages
    act = list(activation_bytes) if activation_bytes is not None else [1.0] * n
    static = list(static_bytes) if static_bytes is not None else [0.0] * n
    if len(act) != n or len(static) != n:
        raise ValueError(f"need one activation size and one static size per stage ({n})")
    pieces = schedule.backward_pieces
    peaks = []
    for s in range(n):
        split = schedule.split_backward and s > 0
        alive, held, best = 0.0, 0, StagePeak(0.0, 0, static[s])
        held_by_batch: dict[int, int] = {}
        for a in (x for rank in schedule.compute for x in rank if x.stage == s):
            if a.op == Op.SF:
                alive += 1.0
            elif (a.op == Op.SB and not split) or (a.op == Op.SW and split):
                alive -= 1.0 / pieces
            elif a.op == Op.TF and s == n - 1:
                held += 1
                held_by_batch[a.batch] = held_by_batch.get(a.batch, 0) + 1
            elif a.op == Op.LOSS and a.microbatch in (None, schedule.units - 1):
                held -= held_by_batch.pop(a.batch, 0)
            total = alive * act[s] + held * teacher_bytes + static[s]
            if total > best.bytes or (total == best.bytes and alive > best.student_units):
                best = StagePeak(alive, held, total)
        peaks.append(best)
    return peaks
