"""1F1B (PipeDream-Flush): one forward, one backward, for the student; teacher forwards first."""

from __future__ import annotations

from collections.abc import Callable

from core.action import Action, Op
from core.schedules.base import check_shape, sb, sf, tf
from core.schedules.spec import ScheduleSpec, register


def one_f_one_b(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """1F1B (PipeDream-Flush) for the student, all teacher forwards of the mini-batch first.

    Returns:
        One compute-action list per stage.

    Stage ``s`` runs ``min(N - 1 - s, U)`` warm-up student forwards, then alternates one forward
    and one backward, then drains. The last stage computes the loss of each micro-batch as soon
    as its forward is done (``LOSS`` with a micro-batch index), which is exact for losses that
    are a sum over micro-batches given all teacher outputs (every loss in this project). The
    bubble equals GPipe's; what 1F1B saves is activation memory (at most N micro-batches alive).
    N = 4, U = 4::

        stage 0: T0T1T2T3F0F1F2F3............B0B0..B1B1...B2B2..B3B3Ot0t1t2t3f0f1f2f3............
        stage 1: ..T0T1T2T3F0F1F2........B0B0F3B1B1...B2B2..B3B3O......t0t1t2t3f0f1f2........b0b0
        stage 2: ....T0T1T2T3F0F1....B0B0F2B1B1F3.B2B2..B3B3O............t0t1t2t3f0f1....b0b0f2b1
        stage 3: ......T0T1T2T3F0B0B0F1B1B1F2LB2B2F3B3B3O..................t0t1t2t3f0b0b0f1b1b1f2
    """
    units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    return one_f_one_b_order(stages, units, batches, lambda s, b, u: sb(s, b, [u], backward_pieces))


def one_f_one_b_order(
    stages: int, units: int, batches: int, backward: Callable[[int, int, int], list[Action]]
) -> list[list[Action]]:
    """1F1B's order, ``backward(stage, batch, unit)`` giving the actions of one unit's backward
    (shared with ``zb``, whose backwards are split)."""
    lists: list[list[Action]] = []
    last = stages - 1
    for s in range(stages):
        actions: list[Action] = []
        for b in range(batches):
            actions += tf(s, b, range(units))
            warmup = min(last - s, units)
            actions += sf(s, b, range(warmup))
            for i in range(units - warmup):
                u = warmup + i
                actions += sf(s, b, [u])
                if s == last:
                    actions.append(Action(s, Op.LOSS, b, u))
                actions += backward(s, b, i)
            for u in range(units - warmup, units):
                actions += backward(s, b, u)
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


register(
    ScheduleSpec(
        "1f1b",
        "PipeDream-Flush student, teacher first",
        one_f_one_b,
        per_unit_loss=True,
        order=3,
        colour="#b07aa1",
    )
)
