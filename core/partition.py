"""Split teacher and student blocks into stages: balance by cost, validate, build stage modules.

A *balance* is a list with the number of consecutive blocks each stage holds, as in torchgpipe.
An EMA teacher is tied to the student: both use the same boundaries over the blocks they share,
and the student's extra blocks (a predictor) join the last stage, so every stage updates its own
teacher partition from its own student partition without communication. A frozen teacher is
balanced on its own, against the student's stage costs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def check_balance(balance: Sequence[int], blocks: int, stages: int, what: str = "student") -> None:
    """Validate a balance.

    Raises:
        ValueError: if it has not one entry per stage, an entry below 1, or does not sum to the
            block count; the message says what to change.
    """
    balance = list(balance)
    if stages > blocks:
        raise ValueError(
            f"{stages} stages but the {what} has only {blocks} blocks; use at most {blocks} "
            "stages, or a model exposing finer blocks (e.g. half blocks for transformers)"
        )
    if len(balance) != stages:
        raise ValueError(
            f"{what} balance {balance} has {len(balance)} entries; need one per stage ({stages})"
        )
    if any((not isinstance(n, int)) or n < 1 for n in balance):
        raise ValueError(f"{what} balance {balance}: every stage needs at least one block")
    if sum(balance) != blocks:
        raise ValueError(
            f"{what} balance {balance} sums to {sum(balance)} but the {what} has {blocks} blocks; "
            "make the entries add up to the block count"
        )


def uniform_balance(blocks: int, stages: int, what: str = "model") -> list[int]:
    """Blocks spread as evenly as counts allow, earlier stages taking the remainder.

    Raises:
        ValueError: if there are more stages than blocks.
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if stages > blocks:
        raise ValueError(
            f"{stages} stages but the {what} has only {blocks} blocks; use at most {blocks} stages, "
            "or a model exposing finer blocks"
        )
    base, rest = divmod(blocks, stages)
    return [base + (1 if s < rest else 0) for s in range(stages)]


def stage_costs(costs: Sequence[float], balance: Sequence[int]) -> list[float]:
    """Sum of ``costs`` per stage under ``balance``."""
    bounds = [0, *itertools.accumulate(balance)]
    return [float(sum(costs[bounds[s] : bounds[s + 1]])) for s in range(len(balance))]


def stage_slices(balance: Sequence[int]) -> list[range]:
    """Block index ranges of each stage under ``balance``."""
    bounds = [0, *itertools.accumulate(balance)]
    return [range(bounds[s], bounds[s + 1]) for s in range(len(balance))]


def balance_by_cost(costs: Sequence[float], stages: int, offsets: Sequence[float] | None = None) -> list[int]:
    """Contiguous split of blocks into ``stages`` non-empty stages that minimises the largest
    ``offsets[s] + sum(costs of stage s)`` (exact dynamic programme, O(blocks^2 x stages)).

    Returns:
        The balance. Among equally good splits the last cut is placed as late as possible,
        which keeps work off the last stage (it also runs the loss).

    Raises:
        ValueError: if there are more stages than blocks.
    """
    n = len(costs)
    if stages > n:
        raise ValueError(f"{stages} stages but only {n} blocks; use at most {n} stages")
    offsets = list(offsets) if offsets is not None else [0.0] * stages
    prefix = [0.0, *itertools.accumulate(float(c) for c in costs)]
    inf = float("inf")
    # best[s][i]: minimal max-cost splitting the first i blocks into s + 1 stages.
    best = [[inf] * (n + 1) for _ in range(stages)]
    cut = [[0] * (n + 1) for _ in range(stages)]
    for i in range(1, n + 1):
        best[0][i] = offsets[0] + prefix[i]
    for s in range(1, stages):
        for i in range(s + 1, n + 1):
            for j in range(s, i):
                value = max(best[s - 1][j], offsets[s] + prefix[i] - prefix[j])
                if value <= best[s][i] + 1e-12:
                    best[s][i], cut[s][i] = value, j
    balance = []
    i = n
    for s in range(stages - 1, 0, -1):
        j = cut[s][i]
        balance.append(i - j)
        i = j
    balance.append(i)
    return balance[::-1]


@dataclass(frozen=True)
class Partition:
    """Stage boundaries of student and teacher.

    Attributes:
        student: student balance (blocks per stage), predictor blocks included in the last stage.
        teacher: teacher balance.
        tied: True when teacher and student share boundaries (EMA teacher).
    """

    student: tuple[int, ...]
    teacher: tuple[int, ...]
    tied: bool

    @property
    def stages(self) -> int:
        return len(self.student)


def plan_partition(
    stages: int,
    student_costs: Sequence[float],
    teacher_costs: Sequence[float],
    teacher: str,
    student_extra: int = 0,
    balance: Sequence[int] | None = None,
    teacher_balance: Sequence[int] | None = None,
) -> Partition:
    """Choose (or check) stage boundaries.

    Args:
        stages: number of stages.
        student_costs: per-block student cost (forward + backward), predictor blocks last.
        teacher_costs: per-block teacher forward cost.
        teacher: ``"ema"`` (tied boundaries) or ``"frozen"`` (teacher balanced on its own).
        student_extra: trailing student blocks the teacher lacks (the predictor); they join the
            last stage. For an EMA teacher ``len(student_costs) - student_extra`` must equal
            ``len(teacher_costs)``.
        balance: explicit student balance, or None to balance by cost.
        teacher_balance: explicit teacher balance, or None (tied: derived; frozen: by cost).

    Returns:
        The :class:`Partition`; auto-balancing minimises the busiest stage's teacher forward +
        student forward + backward.

    Raises:
        ValueError: for balances that do not fit the blocks, more stages than blocks, or an EMA
            teacher whose boundaries differ from the student's.
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    n_student, n_teacher = len(student_costs), len(teacher_costs)
    if teacher == "ema":
        shared = n_student - student_extra
        if shared != n_teacher:
            raise ValueError(
                f"an EMA teacher must mirror the student: student has {shared} blocks besides "
                f"{student_extra} predictor blocks, teacher has {n_teacher}"
            )
        if balance is not None:
            check_balance(balance, n_student, stages, "student")
            tied = list(balance[:-1]) + [balance[-1] - student_extra]
            check_balance(tied, n_teacher, stages, "teacher (tied to the student)")
        else:
            combined = [t + s for t, s in zip(teacher_costs, student_costs)]
            offsets = [0.0] * (stages - 1) + [float(sum(student_costs[shared:]))]
            tied = balance_by_cost(combined, stages, offsets)
        if teacher_balance is not None and list(teacher_balance) != tied:
            raise ValueError(
                f"an EMA teacher must be split like the student (teacher balance {list(teacher_balance)} "
                f"!= {tied}); drop the teacher balance or make it equal, so each stage updates "
                "its own teacher partition"
            )
        student = tied[:-1] + [tied[-1] + student_extra]
        return Partition(tuple(student), tuple(tied), tied=True)
    if teacher != "frozen":
        raise ValueError(f"teacher must be 'ema' or 'frozen', got {teacher!r}")
    if balance is not None:
        check_balance(balance, n_student, stages, "student")
        student = list(balance)
    else:
        student = balance_by_cost(student_costs, stages)
    if teacher_balance is not None:
        check_balance(teacher_balance, n_teacher, stages, "teacher")
        return Partition(tuple(student), tuple(teacher_balance), tied=False)
    # Alternate: teacher against the student's stage costs, then the student against the
    # teacher's (only when the student is free), until the busiest stage stops improving.
    teacher_split = balance_by_cost(teacher_costs, stages, stage_costs(student_costs, student))
    best = _max_stage(student_costs, student, teacher_costs, teacher_split)
    for _ in range(4 if balance is None else 0):
        new_student = balance_by_cost(student_costs, stages, stage_costs(teacher_costs, teacher_split))
        new_teacher = balance_by_cost(teacher_costs, stages, stage_costs(student_costs, new_student))
        value = _max_stage(student_costs, new_student, teacher_costs, new_teacher)
        if value >= best - 1e-12:
            break
        student, teacher_split, best = new_student, new_teacher, value
    return Partition(tuple(student), tuple(teacher_split), tied=False)


def _max_stage(
    student_costs: Sequence[float],
    student: Sequence[int],
    teacher_costs: Sequence[float],
    teacher: Sequence[int],
) -> float:
    return max(
        a + b for a, b in zip(stage_costs(student_costs, student), stage_costs(teacher_costs, teacher))
    )


def stage_modules(blocks: Sequence[nn.Module], balance: Sequence[int], stage: int) -> nn.Sequential:
    """The blocks of ``stage`` under ``balance``, as one ``nn.Sequential`` (sharing parameters).

    Raises:
        ValueError: if the balance does not fit the blocks or ``stage`` is out of range.
    """
    from torch import nn

    check_balance(balance, len(blocks), len(balance))
    if not 0 <= stage < len(balance):
        raise ValueError(f"stage {stage} out of range for {len(balance)} stages")
    return nn.Sequential(*[blocks[i] for i in stage_slices(balance)[stage]])
