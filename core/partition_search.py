"""A local search over a pipeline's partition, by simulation.

The planner's two balances (by cost at the unit size, and by block count) minimise the busiest
stage's work; they are blind to what a schedule does with that work. A stage whose bubble the
schedule fills (a tspipe-family stage with idle time before its first backward, a 1F1B stage
that waits in warm-up) can take a block more than its share, and a stage on the critical path
one less. On the H200 calibrations (realistic model, 450 GB/s): MoCo-v3 ViT-B at 8 stages,
``tspipe-zbh1`` at M = 2, 4,277 samples/s on the cost balance and 4,713 on the one the search
reaches from it (+10 %); DistilBERT at 4 stages, ``tspipe-zb`` at M = 1, +5 % (tested).

From a start balance, each round simulates every balance one block away (one student block
across one stage boundary, every stage keeping one block or more) and moves to the fastest,
while it gains more than ``GAIN``; ``ROUNDS`` rounds at most, so ``2 (N - 1)`` simulations a
round. A tspipe-family schedule's neighbours are simulated with their teacher forwards placed
(:mod:`core.placement`, ``PLACEMENT_BUDGET`` simulations each, the start too, so that all are
compared alike), since the best counts move with the partition: at fixed counts the search
stalls at once on the cost balance. A neighbour over the memory limit is skipped. The search is
local (it may miss a better balance further away); a round costs about 5 s at 8 stages for a
placed schedule (MoCo-v3 ViT-B, M = 2, one core), well under a second for the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.calibration import Calibration
from core.link import Link
from core.paper_scale import SEARCH_BATCHES, calibration_memory, simulate_calibration
from core.schedules import get_schedule

ROUNDS = 4  # most moves of the search
PLACEMENT_BUDGET = 20  # simulations of each neighbour's teacher placement
GAIN = 5e-4  # a move must be this much faster (relative) to be taken
GIB = 2**30


def neighbours(balance: Sequence[int]) -> list[list[int]]:
    """Every balance one block away from ``balance``: one block moved across one stage boundary,
    each stage keeping at least one (boundary by boundary, the move backwards first)."""
    out = []
    for i in range(len(balance) - 1):
        for delta in (-1, 1):
            moved = list(balance)
            moved[i] += delta
            moved[i + 1] -= delta
            if min(moved) >= 1:
                out.append(moved)
    return out


def search_partition(
    cal: Calibration,
    schedule: str,
    stages: int,
    microbatches: int,
    link: Link,
    balance: Sequence[int],
    backward_pieces: int | None = None,
    dp: int = 1,
    memory_gib: float | None = None,
    rounds: int = ROUNDS,
) -> tuple[list[int], float]:
    """The fastest student balance the search reaches from ``balance`` (see the module
    docstring) for one configuration of a calibrated pair.

    Returns:
        (balance, samples/s over the search window); ``balance`` itself when no neighbour gains.

    Raises:
        ValueError: for a start balance that does not fit the pair or ``rounds`` < 0.
    """
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    early = "auto" if get_schedule(schedule).accepts_early else None

    def speed(candidate: Sequence[int]) -> float | None:
        result, built, part = simulate_calibration(
            cal, schedule, stages, microbatches, link, candidate, backward_pieces, SEARCH_BATCHES,
            early, dp=dp, placement_budget=PLACEMENT_BUDGET,
        )  # fmt: skip
        if memory_gib is not None:
            if max(p.bytes for p in calibration_memory(cal, built, part, dp)) / GIB > memory_gib:
                return None
        return result.samples_per_s

    here = list(balance)
    here_speed = speed(here)
    if here_speed is None:
        here_speed = 0.0  # the start does not fit: any neighbour that does is better
    seen = {tuple(here)}
    for _ in range(rounds):
        best, best_speed = None, here_speed * (1 + GAIN)
        for moved in neighbours(here):
            if tuple(moved) in seen:
                continue
            seen.add(tuple(moved))
            try:
                found = speed(moved)
            except ValueError:
                continue  # a balance the pair cannot take (an EMA teacher's tied blocks)
            if found is not None and found > best_speed:
                best, best_speed = moved, found
        if best is None:
            break
        here, here_speed = best, best_speed
    return here, here_speed
