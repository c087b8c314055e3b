"""Cost-aware teacher placement: how many of the next mini-batch's teacher forwards each stage of
a tspipe-family schedule runs before its backward, chosen from per-stage costs by searching on
the simulator.

A schedule's own rule (its spec's ``early_rule``: for tspipe and tspipe-zb
:func:`core.schedules.tspipe_early_teacher_forwards`, for tspipe-zbh1
:func:`core.schedules.zbh1_early_teacher_forwards`) sizes the early teacher forwards for unit
costs; a teacher two or three times the student fills the wait for the first gradient with fewer
forwards, and the rest then delay the backward. The search starts from that rule and from counts
sized by the costs (the stage's wait for its first
gradient in units of its own teacher forward, and those with the first stages running every
teacher forward early), then, from each start in order of its simulated step, moves one stage's
count by 1 or 2 at a time, keeping the counts non-increasing (the schedule deadlocks otherwise;
a staggered frozen teacher, :func:`core.schedules.teacher_fill.staggered`, need not), and
keeps a move only when the simulated step is strictly shorter, within a budget of simulations
shared by the starts (the search
stops at once when the uniform rule is already within 0.1 % of the partition's balance cap,
which no placement can pass). It returns the uniform rule's counts unless
the searched ones simulate strictly faster, so a placed schedule is never slower than its own
rule under the same costs.
"""

from __future__ import annotations

import math

from core.cost_model import CostModel
from core.schedules import build_schedule, furthest_ahead, get_schedule, window_batches
from core.schedules.teacher_fill import staggered
from core.simulate import SimResult, simulate

SEARCH_BATCHES = 6  # simulated window of each evaluation (steady state over batches 2..4)
BUDGET = 40  # most simulations of one placement
CLOSE = 1e-3  # the uniform rule within this share of the balance cap: nothing to search
MOVES = (1, -1, 2, -2)
STARTS = 12  # local searches, from the fastest starting counts, while the budget lasts


def monotone(counts: list[int], units: int, chained: bool = True) -> tuple[int, ...]:
    """``counts`` clipped to ``0..units`` and, where ``chained`` (every stage's teacher forwards
    wait for the previous stage's in the same step), made non-increasing from stage 0 on."""
    out: list[int] = []
    for k in counts:
        k = max(0, min(units, k))
        out.append(min(k, out[-1]) if out and chained else k)
    return tuple(out)


def cost_sized(
    costs: CostModel, units: int, pieces: int, split: bool = False, chained: bool = True
) -> list[tuple[int, ...]]:
    """Starting counts from the costs: stage ``s`` waits for its first gradient while the last
    unit's student forward crosses the stages after it and the first backward piece (its input
    half, for a split backward) comes back; that wait over ``s``'s teacher-forward cost, rounded
    up, to the nearest and down, each capped at ``U`` (and made non-increasing where
    ``chained``); then the rounded-up counts with the first 1 .. N - 1 stages at ``U``: a late
    teacher forward on an early stage delays its step, and so the next forwards of every stage
    after it, which the wait alone does not see."""
    n = costs.stages
    waits = []
    for s in range(n):
        wait = 0.0
        for j in range(s + 1, n):
            share = costs.share(j) if split else 0.0
            wait += costs.student_fwd[j] + costs.student_bwd[j] * (1.0 - share) / pieces
            wait += costs.link.transfer_ms(costs.student_bytes[j - 1]) * 2
        waits.append(wait / max(costs.teacher_fwd[s], 1e-9))
    starts = []
    for rounding in (math.ceil, round, math.floor):
        start = monotone([int(rounding(w - 1e-9)) for w in waits], units, chained)
        if start not in starts:
            starts.append(start)
    for j in range(1, n):  # stages 0..j-1 run every teacher forward early (none late)
        start = (units,) * j + starts[0][j:]
        if start not in starts:
            starts.append(start)
    return starts


def place_teacher_forwards(
    costs: CostModel,
    schedule: str,
    stages: int,
    microbatches: int,
    pieces: int | None = None,
    teacher: str = "ema",
    views: int = 1,
    batch_samples: int = 1,
    budget: int | None = None,
    batches: int = SEARCH_BATCHES,
    lookahead: int | None = None,
) -> tuple[int, ...]:
    """Per-stage early teacher forwards for a schedule whose spec ``accepts_early``, chosen by a
    deterministic search on the simulator (see the module docstring), under teacher lookahead
    ``lookahead`` (None: the schedule's own).

    Returns:
        One count per stage, each in ``0..U`` and non-increasing unless the teacher is
        staggered (:func:`core.schedules.teacher_fill.staggered`): the uniform rule's counts
        unless the searched ones simulate strictly faster.

    Raises:
        ValueError: for a schedule that takes no early counts, or a cost model of another
            stage count.
    """
    spec = get_schedule(schedule)
    if not spec.accepts_early:
        raise ValueError(f"{schedule} takes no per-stage early teacher forwards")
    if costs.stages != stages:
        raise ValueError(f"cost model has {costs.stages} stages, schedule {stages}")
    pieces = spec.pieces(pieces)
    budget = BUDGET if budget is None else budget
    units = microbatches * views
    seen: dict[tuple[int, ...], float] = {}

    def run(counts: tuple[int, ...]) -> SimResult:
        built = build_schedule(
            schedule,
            stages,
            microbatches,
            teacher,
            window_batches(batches, furthest_ahead(schedule, stages, teacher, lookahead)),
            pieces,
            views,
            counts,
            lookahead,
        )
        return simulate(built, costs, batch_samples)

    def step_ms(counts: tuple[int, ...]) -> float:
        if counts not in seen:
            seen[counts] = run(counts).step_ms
        return seen[counts]

    chained = not staggered(stages, teacher, 1 if lookahead is None else lookahead)
    uniform = spec.uniform_early(stages, units, pieces)
    first = run(uniform)
    seen[uniform] = first.step_ms
    if first.efficiency >= (1 - CLOSE) * first.balance_cap:
        return uniform  # no placement can beat the partition's cap
    starts = [uniform] + [
        x for x in cost_sized(costs, units, pieces, spec.split_backward, chained) if x != uniform
    ]
    starts = sorted(starts[: max(1, budget - 1)], key=step_ms)
    best, best_ms = starts[0], step_ms(starts[0])
    for start in starts[:STARTS]:  # a local search from each of the fastest starts
        here, here_ms = start, step_ms(start)
        improved = True
        while improved and len(seen) < budget:
            improved = False
            for s in range(stages):
                for delta in MOVES:
                    moved = list(here)
                    moved[s] += delta
                    if not 0 <= moved[s] <= units or monotone(moved, units, chained) != tuple(moved):
                        continue
                    candidate = tuple(moved)
                    if candidate not in seen and len(seen) >= budget:
                        break
                    if step_ms(candidate) < here_ms * (1 - 1e-9):
                        here, here_ms, improved = candidate, step_ms(candidate), True
        if here_ms < best_ms * (1 - 1e-9):
            best, best_ms = here, here_ms
    return best if step_ms(best) < step_ms(uniform) * (1 - 1e-9) else uniform
