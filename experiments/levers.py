"""Levers on the tspipe family's edge at paper scale, each given to every schedule alike, so the
comparison stays best against best: a partition searched by simulation (the planner's local
search, :mod:`core.partition_search`, from the cost-balanced one at every M and pieces, until no
move gains), and more backward pieces than the simulated table's 1 and 2.

An exploration for issue 15's goal 2 (the family's best over the best of gpipe / 1f1b): it
prints, per schedule and lever, its best configuration and samples/s (realistic model), and per
lever the family's best over the best of gpipe / 1f1b. It writes no rows; the planner (and so
``make simulate``) searches the partition from each schedule's best only (a few rounds), and keeps
pieces 1 and 2.

``python -m experiments.levers --calibration F [--stages 8] [--link-gbps 450] [--max-pieces 8]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from core.calibration import Calibration, load_calibration
from core.link import Link
from core.paper_scale import SEARCH_BATCHES, calibration_partition, configurations, simulate_calibration
from core.partition_search import search_partition
from core.schedules import get_schedule, schedules

FAMILY = tuple(s.name for s in schedules("pipeline") if s.accepts_lookahead)  # the tspipe family
BASELINES = ("gpipe", "1f1b")
SCHEDULES = (*BASELINES, "zb", *FAMILY)
UNBOUNDED = 1000  # rounds of the partition search: until no move gains
# configurations already simulated: (the calibration, samples/s) by configuration
_SEEN: dict[tuple, tuple[Calibration, float]] = {}


def samples_per_s(
    cal: Calibration,
    schedule: str,
    stages: int,
    micro: int,
    pieces: int | None,
    link: Link,
    balance: Sequence[int] | None = None,
    full: bool = False,
) -> float:
    """Simulated samples/s of one configuration: the search's short window with the uniform
    rule of early teacher forwards, or (``full``) the full window with them placed from costs,
    as ``make simulate`` reports; 0 for a configuration the schedule refuses."""
    try:
        student = calibration_partition(cal, stages, balance, cal.batch / micro).student
    except ValueError:
        return 0.0
    key = (id(cal), schedule, stages, micro, pieces, link, tuple(student), full)
    if key in _SEEN and _SEEN[key][0] is cal:  # levers share trials (pieces 1-2 in 1-N)
        return _SEEN[key][1]
    early = "auto" if full and get_schedule(schedule).accepts_early else None
    batches = {} if full else {"batches": SEARCH_BATCHES}
    try:
        found = simulate_calibration(
            cal, schedule, stages, micro, link, balance, pieces, early=early, **batches
        )[0].samples_per_s
    except ValueError:
        found = 0.0
    _SEEN[key] = (cal, found)
    return found


def climb(
    cal: Calibration, schedule: str, stages: int, micro: int, pieces: int | None, link: Link
) -> tuple[list[int], float]:
    """The student balance the partition search (:func:`core.partition_search.search_partition`,
    teacher forwards placed at each trial) reaches from the cost-balanced one, in as many rounds
    as gain; never slower than where it starts.

    Returns:
        (balance, its samples/s over the search's window).
    """
    balance = list(calibration_partition(cal, stages, None, cal.batch / micro).student)
    return search_partition(cal, schedule, stages, micro, link, balance, pieces, rounds=UNBOUNDED)


def best_under(
    cal: Calibration, schedule: str, stages: int, link: Link, max_pieces: int, search: bool
) -> dict:
    """A schedule's best configuration over M (as ``make simulate``: divisors of the batch up to
    4N) and backward pieces ``1..max_pieces`` (where it may split), on the cost-balanced
    partition or (``search``) on the partition :func:`climb` finds for each; the winner
    simulated over the full window, its teacher forwards placed."""
    split = get_schedule(schedule).splits_backward
    micros = sorted({m for m, _ in configurations(cal, schedule, stages)})
    trials = []
    for micro in micros:
        for pieces in range(1, max_pieces + 1) if split else [None]:
            if pieces and cal.batch // micro < pieces:
                continue
            if search:
                balance, found = climb(cal, schedule, stages, micro, pieces, link)
            else:
                balance, found = None, samples_per_s(cal, schedule, stages, micro, pieces, link)
            trials.append((found, micro, pieces, balance))
    _, micro, pieces, balance = max(trials, key=lambda t: t[0])
    full = samples_per_s(cal, schedule, stages, micro, pieces, link, balance, full=True)
    shown = balance or list(calibration_partition(cal, stages, None, cal.batch / micro).student)
    return {"samples_per_s": full, "M": micro, "pieces": pieces or 1, "balance": shown}


def levers(cal: Calibration, stages: int, link: Link, max_pieces: int) -> pd.DataFrame:
    """Every schedule of ``SCHEDULES`` under each lever, one line each (the pieces lever only
    with ``max_pieces`` above the table's 2)."""
    options = {"cost-balanced, pieces 1-2": (2, False), "searched partition, pieces 1-2": (2, True)}
    if max_pieces > 2:
        options[f"cost-balanced, pieces 1-{max_pieces}"] = (max_pieces, False)
    lines = []
    for lever, (pieces, search) in options.items():
        for schedule in SCHEDULES:
            lines.append(
                {
                    "lever": lever,
                    "schedule": schedule,
                    **best_under(cal, schedule, stages, link, pieces, search),
                }
            )
    return pd.DataFrame(lines)


def edges(table: pd.DataFrame) -> pd.DataFrame:
    """Per lever: the family's best samples/s over the best of gpipe / 1f1b."""
    out = []
    for lever, group in table.groupby("lever", sort=False):
        family = group[group["schedule"].isin(FAMILY)]["samples_per_s"].max()
        base = group[group["schedule"].isin(BASELINES)]["samples_per_s"].max()
        out.append({"lever": lever, "family / best of gpipe, 1f1b": family / base})
    return pd.DataFrame(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.levers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calibration", required=True, help="a base calibration file")
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--link-gbps", type=float, default=450.0)
    parser.add_argument("--max-pieces", type=int, default=8, help="the pieces lever's largest count")
    args = parser.parse_args(argv)
    if args.max_pieces < 2:
        print("error: --max-pieces must be at least 2", file=sys.stderr)
        return 2
    try:
        cal = load_calibration(args.calibration, "realistic")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = levers(cal, args.stages, Link(args.link_gbps), args.max_pieces)
    print(f"{cal.pair}, {args.stages} stages, {args.link_gbps:g} GB/s, realistic model (simulated)\n")
    print(table.to_string(index=False, float_format=lambda x: f"{x:,.0f}"))
    print()
    print(edges(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
