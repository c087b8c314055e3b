"""TSPipe: the teacher forwards of the next mini-batch fill the student's pipeline bubbles."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from core.action import Action, Op
from core.schedules.base import check_shape, interleave, sb, sf, tf
from core.schedules.spec import ScheduleSpec, register


def tspipe_early_teacher_forwards(stage: int, stages: int, units: int, pieces: int) -> int:
    """How many next-batch teacher forwards stage ``stage`` runs before its backward.

    Returns:
        ``min(U, ceil((N - 1 - s) * (1 + 2 / P)))``: the time stage ``s`` would wait for its
        first gradient, in teacher-forward slots, when teacher forward = student forward = half
        the student backward (the last micro-batch's forward crosses ``N - 1 - s`` stages and
        the first backward piece, ``2 / P`` forward slots long, crosses them back).
    """
    return min(units, math.ceil((stages - 1 - stage) * (1 + 2 / pieces) - 1e-9))


def fill_ahead(stages: int, teacher: str, lookahead: int = 1) -> tuple[int, ...]:
    """How many mini-batches ahead each stage's filling teacher forwards run.

    Returns:
        ``L`` on every stage for an EMA teacher (every stage must serve a mini-batch with one
        version) or for ``L = 0``; for a frozen teacher, ``L + N - 1 - s`` on stage ``s``: each
        stage runs the teacher one mini-batch further ahead than the next one, so the teacher
        activations a stage needs were sent in an earlier step and no stage waits within a step
        for another's teacher forwards (the same output, as the teacher never changes; the price
        is one mini-batch of teacher activations in flight between neighbouring stages, and stage
        0 reading the inputs ``L + N - 1`` mini-batches ahead).
    """
    if staggered(stages, teacher, lookahead):
        return tuple(lookahead + stages - 1 - s for s in range(stages))
    return (lookahead,) * stages


def staggered(stages: int, teacher: str, lookahead: int = 1) -> bool:
    """Whether the tspipe family staggers the filling teacher forwards over ``stages``
    (:func:`fill_ahead` differs by stage): a frozen teacher on two or more stages under a
    lookahead ``L >= 1``. An EMA teacher is never staggered (its stages would serve one
    mini-batch with different versions), nor is ``L = 0`` (nothing fills)."""
    return stages > 1 and teacher != "ema" and lookahead > 0


def check_early(early: Sequence[int], stages: int, units: int, staggered: bool = False) -> tuple[int, ...]:
    """Check per-stage counts of early teacher forwards (``tspipe(..., early=...)``).

    Returns:
        The counts as a tuple.

    Raises:
        ValueError: unless there is one count per stage, each in ``0..U``, non-increasing in the
            stage (a stage running more early teacher forwards than the one before it would wait
            for teacher activations that stage sends only after its backward: a deadlock), which
            a ``staggered`` frozen teacher (:func:`fill_ahead`) does not need.
    """
    counts = tuple(early)
    if len(counts) != stages:
        raise ValueError(f"early {list(counts)} has {len(counts)} entries; need one per stage ({stages})")
    for s, k in enumerate(counts):
        if not isinstance(k, int) or not 0 <= k <= units:
            raise ValueError(
                f"early[{s}] = {k!r} must be an integer in 0..{units} (the units per mini-batch)"
            )
    for s in range(1, stages):
        if counts[s] > counts[s - 1] and not staggered:
            raise ValueError(
                f"early {list(counts)} must not increase from stage to stage: stage {s} would wait for "
                f"teacher forwards stage {s - 1} runs after its backward (deadlock)"
            )
    return counts


def check_lookahead(lookahead: int) -> int:
    """Check how many mini-batches ahead the teacher forwards run (``tspipe(..., lookahead=L)``).

    Raises:
        ValueError: unless ``L`` is an integer >= 0.
    """
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise ValueError(f"lookahead must be an integer >= 0, got {lookahead!r}")
    return lookahead


def early_counts(
    stages: int,
    units: int,
    pieces: int,
    early: Sequence[int] | None = None,
    staggered: bool = False,
    rule: Callable[[int, int, int, int], int] = tspipe_early_teacher_forwards,
) -> tuple[int, ...]:
    """Per-stage early teacher forwards: ``early`` checked, or ``rule``'s (tspipe's uniform rule
    by default) when None."""
    if early is None:
        return tuple(rule(s, stages, units, pieces) for s in range(stages))
    return check_early(early, stages, units, staggered)


def tspipe(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 2,
    views: int = 1,
    early: Sequence[int] | None = None,
    lookahead: int = 1,
) -> list[list[Action]]:
    """TSPipe: the teacher forwards of mini-batch b + 1 fill the student's bubbles of mini-batch b.

    Returns:
        One compute-action list per stage.

    Stage ``s`` runs, per mini-batch b: every student forward of b; the first ``k_s`` teacher
    forwards of b + 1 (:func:`tspipe_early_teacher_forwards`: the time it would wait for the first
    gradient); the backward of b, each micro-batch in ``P`` pieces; the other ``U - k_s`` teacher
    forwards of b + 1 (the time it would wait for slower upstream stages); then the optimizer
    step. ``early`` gives the ``k_s`` per stage instead (:func:`check_early`: one per stage, in
    ``0..U``, non-increasing); :func:`core.placement.place_teacher_forwards` chooses them from
    per-stage costs (teacher forward, student forward, backward, transfer, from a calibration or
    a profile) by searching on the simulator, so a heavy teacher gets the early slots its
    stage's wait really holds; ``PipelineConfig.teacher_early`` runs such counts. Only the first
    mini-batch's teacher forwards run alone, in a prologue. There is no flush of teacher work between mini-batches, so with ``t = f = b / 2`` and ``P = 2`` the stages never
    idle once ``U >= 2 (N - 1)``: any ``N`` and ``M``, where the original required ``M = N - 1``.

    Every teacher forward of b + 1 runs before the stage's step of b, so an EMA teacher serves
    mini-batch b + 1 with the weights after step b - 1: one version stale (ARCHITECTURE.md, "The version rule"), without
    storing an extra copy. The student stays exactly synchronous. Steady state, N = 4, P = 2,
    loss and step taking no time; U = 4 leaves a bubble (4 < 2 (N - 1))::

        stage 0: BBBBBBBBBBBBf0f1f2f3T0T1T2T3....bbbbbbbbbbbbbbbbF0F1F2F3t0t1t2t3....BBBBBBBBBBBB
        stage 1: BBBBBBBBBB....f0f1f2f3T0T1T2T3bbbbbbbbbbbbbbbb....F0F1F2F3t0t1t2t3BBBBBBBBBBBB
        stage 2: BBBBBBBBt2t3....f0f1f2f3T0T1bbbbbbbbbbbbbbbbT2T3....F0F1F2F3t0t1BBBBBBBBBBBBBB
        stage 3: BBBBBBt0t1t2t3....f0f1f2f3bbbbbbbbbbbbbbbbT0T1T2T3....F0F1F2F3BBBBBBBBBBBBBBBB

    and U = 6 = 2 (N - 1) leaves none::

        stage 0: BBBBBBBBBBBBf0f1f2f3f4f5T0T1T2T3T4T5bbbbbbbbbbbbbbbbbbbbbbbbF0F1F2F3F4F5t0t1t2t3
        stage 1: BBBBBBBBBBt4t5f0f1f2f3f4f5T0T1T2T3bbbbbbbbbbbbbbbbbbbbbbbbT4T5F0F1F2F3F4F5t0t1t2
        stage 2: BBBBBBBBt2t3t4t5f0f1f2f3f4f5T0T1bbbbbbbbbbbbbbbbbbbbbbbbT2T3T4T5F0F1F2F3F4F5t0t1
        stage 3: BBBBBBt0t1t2t3t4t5f0f1f2f3f4f5bbbbbbbbbbbbbbbbbbbbbbbbT0T1T2T3T4T5F0F1F2F3F4F5BB

    On stage 0, which ends the backward chain, the late teacher forwards are spread between the
    backward pieces, where they fill waits for a slower downstream backward without delaying
    anyone; on the other stages they follow the backward.

    ``lookahead`` L generalises the one mini-batch ahead: the teacher forwards filling the step of
    b are those of b + L (a prologue runs mini-batches 0 .. L - 1), so an EMA teacher serves
    mini-batch b with version ``max(0, b - L)`` (staleness L) and the last stage holds L
    mini-batches of teacher outputs. L = 1 is the schedule above; L = 0 runs the teacher forwards
    of b at the start of its own step (exact, nothing filled). Every version is still read
    before the step that replaces it, so no teacher copy is stored while a run goes on; a
    resumed run needs the L versions before its first step (``runtime.versions``).

    A frozen teacher is *staggered* (:func:`fill_ahead`): stage ``s`` fills its steps with the
    teacher forwards of b + L + N - 1 - s, one mini-batch further ahead than stage s + 1, so a
    stage's teacher inputs arrived in an earlier step and its teacher forwards wait for no one
    (the early counts need not decrease then). With the same order on every stage and only
    waits removed, no action starts later than unstaggered under the same costs. On the H200
    calibrations (linear model, M = N, the same placement search) the best of the family for
    the KD and DistilBERT pairs goes from 0.92 and 0.91 of the balance cap to 0.98 at N = 8.
    """
    n_units = check_shape(stages, microbatches, teacher, batches, backward_pieces, views)

    def tail(s: int, b: int, late: list[Action]) -> list[Action]:
        backward = sb(s, b, range(n_units), backward_pieces)
        return interleave(backward, late) if s == 0 else backward + late

    return tspipe_order(stages, n_units, batches, backward_pieces, tail, early, lookahead, teacher)


def tspipe_order(
    stages: int,
    n_units: int,
    batches: int,
    pieces: int,
    tail: Callable[[int, int, list[Action]], list[Action]],
    early: Sequence[int] | None = None,
    lookahead: int = 1,
    teacher: str = "ema",
) -> list[list[Action]]:
    """tspipe's order, ``tail(stage, batch, late)`` giving what runs between the early teacher
    forwards of the filling batch and the step: the backward of ``batch`` with the ``late``
    teacher forwards of the filling one (shared with ``tspipe-zb``, whose backwards are split);
    ``early``: per-stage counts of early teacher forwards (None: the uniform rule);
    ``lookahead``: how many mini-batches ahead the filling batch is on the last stage (0: a
    step's own teacher forwards run first, filling nothing); a frozen ``teacher`` is staggered
    (:func:`fill_ahead`)."""
    aheads = fill_ahead(stages, teacher, check_lookahead(lookahead))
    counts = early_counts(stages, n_units, pieces, early, staggered=staggered(stages, teacher, lookahead))
    last = stages - 1
    units = range(n_units)
    lists: list[list[Action]] = []
    for s in range(stages):
        early_s, ahead = counts[s], aheads[s]
        actions = [a for b in range(min(ahead, batches)) for a in tf(s, b, units)]
        for b in range(batches):
            fill = b + ahead
            nxt = ahead > 0 and fill < batches
            if ahead == 0:
                actions += tf(s, b, units)
            actions += sf(s, b, units)
            if s == last:
                actions.append(Action(s, Op.LOSS, b))
            if nxt:
                actions += tf(s, fill, range(early_s))
            actions += tail(s, b, tf(s, fill, range(early_s, n_units)) if nxt else [])
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


register(
    ScheduleSpec(
        "tspipe",
        "next batch's teacher forwards fill the bubbles",
        tspipe,
        ema_staleness=1,
        default_pieces=2,
        order=4,
        colour="#e15759",
        gantt=True,
        subject=True,
        accepts_early=True,
        early_rule=tspipe_early_teacher_forwards,
        accepts_lookahead=True,
    )
)
