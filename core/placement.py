"""Cost-aware teacher placement: how many of the next mini-batch's teacher forwards each stage of
a tspipe-family schedule runs before its backward, chosen from per-stage costs by searching on
the simulator.

tspipe's own rule (:func:`core.schedules.tspipe_early_teacher_forwards`) sizes the early
teacher forwards for ``t = f = b / 2``; a teacher two or three times the student fills the wait
for the first gradient with fewer forwards, and the rest then delay the backward. The search
starts from that rule and from counts sized by the costs (the stage's wait for its first
gradient in units of its own teacher forward), then moves one stage's count by 1 or 2 at a
time, keeping the counts non-increasing (the schedule deadlocks otherwise), and keeps a move
only when the simulated step is strictly shorter, within a budget of simulations (the search
stops at once when the uniform rule is already within 0.1 % of the partition's balance cap,
which no placement can pass). It returns the uniform rule's counts unless
the searched ones simulate strictly faster, so a placed schedule is never slower than tspipe's
own under the same costs.
"""

from __future__ import annotations

import math

from core.schedules import build_schedule, get_schedule, window_batches
from core.schedules.teacher_fill import early_counts
from core.simulate import CostModel, SimResult, simulate

SEARCH_BATCHES = 6  # simulated window of each evaluation (steady state over batches 2..4)
BUDGET = 40  # most simulations of one placement
CLOSE = 1e-3  # the uniform rule within this share of the balance cap: nothing to search
MOVES = (1, -1, 2, -2)


def monotone(counts: list[int], units: int) -> tuple[int, ...]:
    """``counts`` clipped to ``0..units`` and made non-increasing from stage 0 on."""
    out: list[int] = []
    for k in counts:
        k = max(0, min(units, k))
        out.append(min(k, out[-1]) if out else k)
    return tuple(out)


def cost_sized(costs: CostModel, units: int, pieces: int, split: bool = False) -> list[tuple[int, ...]]:
    """Starting counts from the costs: stage ``s`` waits for its first gradient while the last
    unit's student forward crosses the stages after it and the first backward piece (its input
    half, for a split backward) comes back; that wait over ``s``'s teacher-forward cost, rounded
    up, to the nearest and down, each capped at ``U`` and made non-increasing."""
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
        start = monotone([int(rounding(w - 1e-9)) for w in waits], units)
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
        One count per stage, non-increasing, each in ``0..U``: the uniform rule's counts unless
        the searched ones simulate strictly faster.

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
            window_batches(batches, lookahead),
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

    uniform = early_counts(stages, units, pieces)
    first = run(uniform)
    seen[uniform] = first.step_ms
    if first.efficiency >= (1 - CLOSE) * first.balance_cap:
        return uniform  # no placement can beat the partition's cap
    best, best_ms = uniform, first.step_ms
    for start in cost_sized(costs, units, pieces, spec.split_backward):
        if len(seen) < budget and step_ms(start) < best_ms * (1 - 1e-9):
            best, best_ms = start, step_ms(start)
    improved = True
    while improved and len(seen) < budget:
        improved = False
        for s in range(stages):
            for delta in MOVES:
                moved = list(best)
                moved[s] += delta
                if not 0 <= moved[s] <= units or monotone(moved, units) != tuple(moved):
                    continue
                candidate = tuple(moved)
                if candidate not in seen and len(seen) >= budget:
                    break
                if step_ms(candidate) < best_ms * (1 - 1e-9):
                    best, best_ms, improved = candidate, step_ms(candidate), True
    return best if step_ms(best) < step_ms(uniform) * (1 - 1e-9) else uniform
