"""tspipe-zbh1: the next mini-batch's teacher forwards fill the bubbles of a 1F1B student whose
backwards are split (``zb``'s order), instead of those of a flushed one (``tspipe``,
``tspipe-zb``)."""

from __future__ import annotations

from collections.abc import Sequence

from core.action import Action, Op
from core.schedules.base import check_shape, interleave, sf, tf
from core.schedules.spec import ScheduleSpec, register
from core.schedules.teacher_fill import check_lookahead, early_counts, fill_ahead, staggered
from core.schedules.zero_bubble import split_pieces


def zbh1_early_teacher_forwards(stage: int, stages: int, units: int, pieces: int) -> int:
    """How many next-batch teacher forwards stage ``stage`` of ``tspipe-zbh1`` runs before its
    first backward.

    Returns:
        ``min(U, 2 (N - 1 - s))``: the time stage ``s`` waits for its first gradient after its
        warm-up forwards and one more, in teacher-forward slots, when teacher forward = student
        forward = each half of a split backward: the first unit's gradient crosses the ``N - 1 - s``
        stages after it back, and in 1F1B's alternation each of them runs a forward and an input
        half before passing it on. Of the rules tried on those unit costs (N 2..8, U 1..16,
        P 1 and 2; ``(N - 1 - s)`` times 1/P, 2/P, 3/P, 1 + 1/P, 1 + 2/P (tspipe's) or 2), this one
        gave the shortest step on average (1 % above the best of them per shape).
    """
    del pieces  # the rule does not depend on them (see above)
    return min(units, 2 * (stages - 1 - stage))


def tspipe_zbh1(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 2,
    views: int = 1,
    early: Sequence[int] | None = None,
    lookahead: int = 1,
) -> list[list[Action]]:
    """The teacher forwards of mini-batch b + 1 fill the bubbles of a ``zb`` student of b.

    Returns:
        One compute-action list per stage.

    Stage ``s`` runs, per mini-batch b: ``min(N - 1 - s, U)`` warm-up student forwards of b, one
    more, ``k_s`` teacher forwards of b + 1 (:func:`zbh1_early_teacher_forwards`, or ``early``:
    the time it waits for its first gradient), then 1F1B's alternation of one backward (input
    half, then weight half, each in ``P`` pieces) and one forward, the drain of the last
    backwards, the other ``U - k_s`` teacher forwards of b + 1, and the step. The last stage
    computes each unit's loss as soon as its forward is done (``LOSS`` per unit, as ``1f1b``),
    with the teacher outputs of b computed during step b - 1, so its first backward starts
    after one unit's forward crosses the pipeline instead of all of them (``tspipe``'s flush);
    and at most ``N`` units' activations are alive on a stage, as in 1F1B. On stage 0, which
    ends the backward chain, the late teacher forwards are spread between the drain's
    backwards, as in tspipe; on the other stages they follow them. The teacher version rule is
    tspipe's (one version stale for an EMA teacher; ``lookahead`` L and a staggered frozen
    teacher as in :func:`~core.schedules.teacher_fill.tspipe`).

    With unit costs it is never faster than ``tspipe-zb`` (2.5 % slower on average over N 2..8,
    U 1..16, P 1 and 2): what it gains is on real costs, where a flushed student's last stage
    waits for every unit's forward before its first backward; see ARCHITECTURE.md for the H200
    calibrations, on which the planner chooses between the two. N = 4, U = 4, P = 1, from the
    start (the step drawn as ``OO``)::

        stage 0: T0T1T2T3F0F1F2F3t0t1t2t3....B0B0..B1B1..B2B2B3B3OOf0f1f2f3......b0b0..b1b1..b2b2..b3b3oo
        stage 1: ..T0T1T2T3F0F1F2..t0t1t2t3B0W0F3B1W1..B2W2B3W3OO....f0f1f2....b0w0f3b1w1..b2w2..b3w3oo..
        stage 2: ....T0T1T2T3F0F1....t0t1B0W0F2B1W1F3B2W2B3W3t2t3OO....f0f1..b0w0f2b1w1f3b2w2..b3w3oo....
        stage 3: ......T0T1T2T3F0B0W0F1B1W1....F2B2W2F3B3W3t0t1t2t3OO....f0b0w0f1b1w1f2b2w2f3b3w3oo......
    """
    n_units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)
    is_staggered = staggered(stages, teacher, check_lookahead(lookahead))
    aheads = fill_ahead(stages, teacher, lookahead)
    counts = early_counts(stages, n_units, backward_pieces, early, is_staggered, zbh1_early_teacher_forwards)
    last = stages - 1

    lists: list[list[Action]] = []
    for s in range(stages):
        k, ahead = counts[s], aheads[s]
        actions = [a for b in range(min(ahead, batches)) for a in tf(s, b, range(n_units))]
        for b in range(batches):
            fill = b + ahead
            nxt = ahead > 0 and fill < batches
            if ahead == 0:
                actions += tf(s, b, range(n_units))
            early_tf = tf(s, fill, range(k)) if nxt else []
            late_tf = tf(s, fill, range(k, n_units)) if nxt else []
            warm = min(last - s, n_units)
            actions += sf(s, b, range(warm))
            for i in range(n_units - warm):
                actions += sf(s, b, [warm + i])
                if s == last:
                    actions.append(Action(s, Op.LOSS, b, warm + i))
                if i == 0:
                    actions += early_tf
                actions += split_pieces(s, b, i, backward_pieces)
            if warm == n_units:
                actions += early_tf
            drain = [
                x for u in range(n_units - warm, n_units) for x in split_pieces(s, b, u, backward_pieces)
            ]
            actions += interleave(drain, late_tf) if s == 0 else drain + late_tf
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


register(
    ScheduleSpec(
        "tspipe-zbh1",
        "tspipe's teacher filling on zb's 1F1B order (loss per unit, split backwards)",
        tspipe_zbh1,
        ema_staleness=1,
        default_pieces=2,
        split_backward=True,
        per_unit_loss=True,
        order=4,
        colour="#f28e2b",
        accepts_early=True,
        early_rule=zbh1_early_teacher_forwards,
        accepts_lookahead=True,
    )
)
