"""A schedule defined outside ``core/schedules``: student forwards before teacher forwards, then
GPipe's flush. It exists to show that one new module and one ``register`` call are all a
schedule needs (``tests/core/test_registry.py``)."""

from __future__ import annotations

from core.action import Action, Op
from core.schedules import ScheduleSpec, register
from core.schedules.base import check_shape, sb, sf, tf


def student_first(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """Every student forward, then every teacher forward, then the loss, backwards and step.

    N = 2, U = 2::

        stage 0: F0F1T0T1....B0B0B1B1O
        stage 1: ..F0F1T0T1LB0B0B1B1O
    """
    units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    lists = []
    for s in range(stages):
        actions: list[Action] = []
        for b in range(batches):
            actions += sf(s, b, range(units)) + tf(s, b, range(units))
            if s == stages - 1:
                actions.append(Action(s, Op.LOSS, b))
            actions += sb(s, b, range(units), backward_pieces)
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


SPEC = register(
    ScheduleSpec(
        "toy", "student forwards first, then GPipe's flush", student_first, order=50, colour="#17becf"
    )
)
