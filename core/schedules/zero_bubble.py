"""Split backwards (zero-bubble pipeline parallelism, Qi et al., ICLR 2024): each student backward
runs as ``SB``, the gradient of the stage input, which the previous stage waits for, and ``SW``,
the gradient of the stage's weights, which only the optimizer step needs.

Stage 0 sends no input gradient, so its ``SB`` is the whole backward and its ``SW`` is empty
(the runtime and the simulator agree on this). Every ``SW`` of a mini-batch runs before the
stage's ``OPT``, so global-norm clipping and the NaN guard see every gradient, exactly as
without the split; what that costs is that weight halves cannot be deferred past the step
(into the next mini-batch's bubbles), as the original ZB-H2 and ZB-V schedules do.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.action import Action, Op
from core.schedules.base import check_shape, interleave, parts, sb, sw
from core.schedules.pipedream import one_f_one_b_order
from core.schedules.spec import ScheduleSpec, register
from core.schedules.teacher_fill import tspipe_early_teacher_forwards, tspipe_order


def zero_bubble(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """1F1B with split backwards: each backward's input gradient leaves before its weight half.

    Returns:
        One compute-action list per stage.

    The order of 1F1B (teacher forwards first, ``N - 1 - s`` warm-up forwards, one forward and
    one backward, drain), with every backward ``B`` followed by its weight half ``W``. The
    gradient of a stage's input is sent after ``B`` alone, so the backward chain crosses the
    pipeline in ``b / 2`` per stage instead of ``b``, which shortens the drain, and the number of
    micro-batches alive is 1F1B's. Deferring the weight halves further (the W-fills-the-drain
    orders of ZB-H1) did not shorten the simulated step under this project's cost model, where
    stage 0 runs whole backwards and bounds the drain; see ARCHITECTURE.md. N = 4, U = 4::

        stage 0: T0T1T2T3F0F1F2F3......B0B0..B1B1...B2B2..B3B3Ot0t1t2t3f0f1f2f3......b0b0..b1b1...
        stage 1: ..T0T1T2T3F0F1F2....B0W0F3B1W1...B2W2..B3W3O....t0t1t2t3f0f1f2....b0w0f3b1w1...b2
        stage 2: ....T0T1T2T3F0F1..B0W0F2B1W1F3.B2W2..B3W3O........t0t1t2t3f0f1..b0w0f2b1w1f3.b2w2
        stage 3: ......T0T1T2T3F0B0W0F1B1W1F2LB2W2F3B3W3O............t0t1t2t3f0b0w0f1b1w1f2lb2w2f3
    """
    units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    return one_f_one_b_order(stages, units, batches, lambda s, b, u: split_pieces(s, b, u, backward_pieces))


def split_pieces(stage: int, batch: int, unit: int, pieces: int) -> list[Action]:
    """Each piece's input half, then its weight half."""
    return [
        x
        for p in parts(pieces)
        for x in (Action(stage, Op.SB, batch, unit, p), Action(stage, Op.SW, batch, unit, p))
    ]


def tspipe_zb(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 2,
    views: int = 1,
    early: Sequence[int] | None = None,
    lookahead: int = 1,
) -> list[list[Action]]:
    """TSPipe with split backwards: teacher forwards of the next mini-batch and weight halves
    both fill the student's bubbles.

    Returns:
        One compute-action list per stage.

    As ``tspipe`` (ARCHITECTURE.md), with each backward split: stage ``s`` runs every student
    forward of b, tspipe's ``k_s`` early teacher forwards of b + 1
    (:func:`~core.schedules.teacher_fill.tspipe_early_teacher_forwards`), every input half
    ``B`` of b, then the weight halves ``W``, then the remaining teacher forwards of b + 1, then
    the step (``early``: per-stage counts instead, and ``lookahead``: the teacher's mini-batches
    ahead, as in tspipe). Stage 0, whose backward is
    whole, spreads the late teacher forwards between its backward pieces as in tspipe. Of the orders tried in simulation (N 2..8, U 1..16, unit
    costs), this one was never slower than tspipe and 5 % faster on average; fewer early teacher
    forwards (sized for the shorter wait of ``B`` alone), or teacher forwards before the weight
    halves, were up to 3 % and 28 % slower than tspipe on some shapes. The teacher version rule is
    tspipe's (one version stale for an EMA teacher). N = 4, U = 4, P = 2, from the start (tspipe leaves
    five idle slots before each backward of stage 0 here, tspipe-zb three)::

        stage 0: T0T1T2T3F0F1F2F3t0t1t2t3...BBBBBBBBBBBBBBBBOf0f1f2f3T0T1T2T3...bbbbbbbbbbbbbbbboF
        stage 1: ..T0T1T2T3F0F1F2F3t0t1t2t3BBBBBBBBWWWWWWWWO...f0f1f2f3T0T1T2T3bbbbbbbbwwwwwwwwo..
        stage 2: ....T0T1T2T3F0F1F2F3t0t1BBBBBBBBWWWWWWWWt2t3O...f0f1f2f3T0T1bbbbbbbbwwwwwwwwT2T3o
        stage 3: ......T0T1T2T3F0F1F2F3LBBBBBBBBWWWWWWWWt0t1t2t3O..f0f1f2f3lbbbbbbbbwwwwwwwwT0T1T2
    """
    n_units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)

    def tail(s: int, b: int, late: list[Action]) -> list[Action]:
        if s == 0:
            pairs = [x for u in range(n_units) for x in split_pieces(s, b, u, backward_pieces)]
            return interleave(pairs, late)
        units = range(n_units)
        return sb(s, b, units, backward_pieces) + sw(s, b, units, backward_pieces) + late

    return tspipe_order(stages, n_units, batches, backward_pieces, tail, early, lookahead, teacher)


register(
    ScheduleSpec(
        "zb",
        "1F1B with split backwards (input gradient first)",
        zero_bubble,
        split_backward=True,
        per_unit_loss=True,
        order=3,
        colour="#edc948",
    )
)
register(
    ScheduleSpec(
        "tspipe-zb",
        "tspipe with split backwards: teacher forwards and weight halves fill bubbles",
        tspipe_zb,
        ema_staleness=1,
        default_pieces=2,
        split_backward=True,
        order=4,
        colour="#ff9da7",
        gantt=True,
        accepts_early=True,
        early_rule=tspipe_early_teacher_forwards,
        accepts_lookahead=True,
    )
)
