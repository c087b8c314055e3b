"""Schedules as data: pure functions from pipeline shape to per-stage action lists, a registry
of specs, lowering and unrolling.

``from core.schedules import build_schedule, get_schedule, SCHEDULES`` is all most code needs.
One module per schedule family registers its specs on import (``flush``: sequential, mp,
gpipe; ``pipedream``: 1f1b; ``teacher_fill``: tspipe; ``zero_bubble``: zb and tspipe-zb, whose
backwards are split into input and weight halves; ``teacher_1f1b``: tspipe-zbh1, teacher filling
on zb's 1F1B order; ``runners``: ddp and the torch peer).
"""

from core.schedules import runners  # noqa: F401  (registers ddp and the torch peer)
from core.schedules.base import TEACHER_KINDS
from core.schedules.build import Program, Schedule, build_schedule, furthest_ahead, window_batches
from core.schedules.flush import gpipe, mp, sequential
from core.schedules.lower import identity_placement, lower
from core.schedules.pipedream import one_f_one_b
from core.schedules.spec import (
    SCHEDULES,
    ScheduleSpec,
    get_schedule,
    load_plugins,
    order_of,
    register,
    schedules,
    subject,
)
from core.schedules.teacher_1f1b import tspipe_zbh1, zbh1_early_teacher_forwards
from core.schedules.teacher_fill import tspipe, tspipe_early_teacher_forwards
from core.schedules.zero_bubble import tspipe_zb, zero_bubble

__all__ = [
    "SCHEDULES",
    "TEACHER_KINDS",
    "Program",
    "Schedule",
    "ScheduleSpec",
    "build_schedule",
    "furthest_ahead",
    "get_schedule",
    "gpipe",
    "identity_placement",
    "load_plugins",
    "lower",
    "mp",
    "one_f_one_b",
    "order_of",
    "register",
    "schedules",
    "sequential",
    "subject",
    "tspipe",
    "tspipe_early_teacher_forwards",
    "tspipe_zb",
    "tspipe_zbh1",
    "window_batches",
    "zbh1_early_teacher_forwards",
    "zero_bubble",
]
