"""Flushed schedules: every forward of a mini-batch, then every backward, then the step.

``gpipe`` pipelines micro-batches this way; ``sequential`` is its one-stage case, the reference
every schedule must equal; ``mp`` is its one-micro-batch case, inter-layer model parallelism.
"""

from __future__ import annotations

from core.action import Action, Op
from core.schedules.base import check_shape, sb, sf, tf
from core.schedules.spec import ScheduleSpec, register


def _flush_batch(stage: int, stages: int, batch: int, units: int, pieces: int) -> list[Action]:
    """Teacher forwards, student forwards, loss, backwards, step: one flushed mini-batch."""
    actions = tf(stage, batch, range(units)) + sf(stage, batch, range(units))
    if stage == stages - 1:
        actions.append(Action(stage, Op.LOSS, batch))
    actions += sb(stage, batch, range(units), pieces)
    actions.append(Action(stage, Op.OPT, batch))
    return actions


def gpipe(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """GPipe: every teacher and student forward of a mini-batch, then every backward, then a flush.

    Returns:
        One compute-action list per stage.

    Per stage and mini-batch the work is ``U (t + f + b)`` (U units, teacher forward t, student
    forward f, backward b). The student's dependency chain crosses the pipeline twice, so every
    stage also waits ``(N - 1) (f + b / P)`` (forward fill plus the drain of the first backward
    piece, P pieces), which no teacher work fills. With ``t = f``:

        bubble fraction = (N - 1)(f + b/P) / (U (2f + b) + (N - 1)(f + b/P))

    which at ``t = f = 1, b = 2, P = 1`` is ``3 (N - 1) / (4 U + 3 (N - 1))``: the
    ``(N - 1) / (M + N - 1)`` of a plain GPipe with the teacher's forwards added to the work.

    N = 4, U = 4, two mini-batches::

        stage 0: T0T1T2T3F0F1F2F3...................B0B0B1B1B2B2B3B3Ot0t1t2t3f0f1f2f3............
        stage 1: ..T0T1T2T3F0F1F2F3.............B0B0B1B1B2B2B3B3O......t0t1t2t3f0f1f2f3..........
        stage 2: ....T0T1T2T3F0F1F2F3.......B0B0B1B1B2B2B3B3O............t0t1t2t3f0f1f2f3.......b
        stage 3: ......T0T1T2T3F0F1F2F3LB0B0B1B1B2B2B3B3O..................t0t1t2t3f0f1f2f3lb0b0b
    """
    units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    return [
        [a for b in range(batches) for a in _flush_batch(s, stages, b, units, backward_pieces)]
        for s in range(stages)
    ]


def sequential(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """Single-process reference: the GPipe order on one stage; what every schedule must equal.

    Returns:
        One compute-action list (one stage).

    Raises:
        ValueError: if ``stages != 1``.

    N = 1, U = 4::

        stage 0: T0T1T2T3F0F1F2F3LB0B0B1B1B2B2B3B3O
    """
    if stages != 1:
        raise ValueError(f"sequential runs on one stage; got stages={stages}. Use --stages 1")
    return gpipe(1, microbatches, teacher, batches, backward_pieces, views)


def mp(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """Inter-layer model parallelism: the whole mini-batch passes the stages one at a time.

    Returns:
        One compute-action list per stage.

    Raises:
        ValueError: if ``microbatches != 1``.

    Its receives are hoisted (:func:`lower`), so a stage starts a phase only once its neighbour
    has finished the whole phase: at any moment one stage works, as in the paper's baseline,
    and throughput is that of one device minus transfers. N = 4, two views::

        stage 0: T0T1F0F1.................................................B0B0B1B1O
        stage 1: ........T0T1F0F1.................................B0B0B1B1O........
        stage 2: ................T0T1F0F1.................B0B0B1B1O................
        stage 3: ........................T0T1F0F1LB0B0B1B1O........................
    """
    check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    if microbatches != 1:
        raise ValueError(
            f"mp runs the whole mini-batch as one micro-batch, got microbatches={microbatches}; "
            "set microbatches=1, or use gpipe, 1f1b or tspipe to pipeline micro-batches"
        )
    return gpipe(stages, 1, teacher, batches, backward_pieces, views)


register(
    ScheduleSpec("sequential", "one process; the reference", sequential, stages=1, order=0, colour="#bab0ac")
)
register(
    ScheduleSpec(
        "mp",
        "inter-layer model parallel, one stage at a time",
        mp,
        microbatches=1,
        hoist_receives=True,
        baseline=True,
        order=1,
        colour="#7f7f7f",
    )
)
register(
    ScheduleSpec(
        "gpipe",
        "all forwards, all backwards, flush per batch",
        gpipe,
        order=2,
        colour="#4e79a7",
        gantt=True,
        baseline=True,
    )
)
