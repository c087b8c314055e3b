"""The planner: the fastest configuration of a calibrated pair on ``G`` GPUs within a memory limit.

It searches, by simulation, every pipeline schedule of the registry that runs the pair on ``G``
stages (and ddp, through :func:`core.paper_scale.simulate_ddp`) x micro-batches (the divisors of
the batch, :func:`core.paper_scale.configurations`) x backward pieces (1 and 2 where a schedule
may split) x partition (balanced by cost, and uniform by block count; then, from each schedule's
best, a local search over the balance: :mod:`core.partition_search`), computes each stage's
peak memory (:func:`core.paper_scale.calibration_memory`), drops what exceeds the limit, places
the tspipe family's early teacher forwards from costs at each schedule's ``PLACED`` best
configurations (:mod:`core.placement`), and ranks the rest by predicted samples/s.

The search simulates a short window (``SEARCH_BATCHES``); each schedule's three best are
simulated again over the full window of ``make simulate`` (``WINDOW_BATCHES``) before the
ranking, so the figures the planner reports are those of the simulated table
(``Candidate.window``). With ``max_lookahead`` L > 1 (``--max-lookahead``), the tspipe family's
best with an EMA teacher is also tried with teacher lookahead 2..L (a staler teacher: the one
serving batch b is version b - L; opt-in, since it changes what is trained), reported in the
``L`` column. With ``hybrid`` (``--hybrid``) it also searches every schedule as ``dp``
replicas of a ``G / dp``-stage pipeline, for every dp >= 2 that leaves 2 stages or more
(``dp`` column; modelled as in :mod:`core.paper_scale`).

The search over M stops for a schedule and partition after two larger M that fit the limit did
no better (as :func:`core.paper_scale.best_configuration`): smaller micro-batches only cost more.

``python -m core.plan --calibration F --gpus G [--memory-gib X] [--format table|json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from core.calibration import Calibration, load_calibration
from core.candidate import Candidate, candidate, ddp_candidate, per_schedule
from core.link import Link
from core.paper_scale import PLACED, SEARCH_BATCHES, configurations, divisors, simulate_calibration
from core.partition import uniform_balance
from core.partition_search import search_partition
from core.plan_table import table
from core.schedules import get_schedule, schedules
from core.simulate import WINDOW_BATCHES


def pipeline_schedules(gpus: int, names: Sequence[str] | None = None) -> list[str]:
    """Pipeline schedules of the registry (or those of ``names``) that run on ``gpus`` stages."""
    specs = [get_schedule(n) for n in names] if names else list(schedules("pipeline"))
    out = []
    for spec in specs:
        if not spec.is_pipeline:
            continue
        if (spec.stages is None or spec.stages == gpus) and gpus >= spec.min_stages:
            out.append(spec.name)
    return out


def _settle(cal: Calibration, cand: Candidate, link: Link, lookahead: int | None = None) -> Candidate:
    """``cand`` simulated again over the full window (with teacher lookahead ``lookahead``)."""
    balance = None if cand.partition == "cost" else list(cand.balance)
    early = list(cand.teacher_early) if cand.teacher_early is not None else None
    found = simulate_calibration(
        cal, cand.schedule, cand.stages, cand.microbatches, link, balance, cand.backward_pieces,
        WINDOW_BATCHES, early, lookahead, cand.dp,
    )  # fmt: skip
    return candidate(cal, found, cand.partition, lookahead, cand.dp)


def _searched(cal: Calibration, cand: Candidate, link: Link, memory_gib: float | None) -> Candidate | None:
    """``cand`` on the balance the partition search reaches from its own, over the full window
    (teacher forwards placed anew); None when the search stays or the full window loses."""
    if cand.stages < 2:
        return None
    balance, _ = search_partition(
        cal, cand.schedule, cand.stages, cand.microbatches, link, cand.balance, cand.backward_pieces,
        cand.dp, memory_gib,
    )  # fmt: skip
    if balance == list(cand.balance):
        return None
    found = simulate_calibration(
        cal, cand.schedule, cand.stages, cand.microbatches, link, balance, cand.backward_pieces,
        WINDOW_BATCHES, "auto" if get_schedule(cand.schedule).accepts_early else None, dp=cand.dp,
    )  # fmt: skip
    searched = candidate(cal, found, "searched", dp=cand.dp)
    return searched if searched.samples_per_s > cand.samples_per_s else None


def _settled(
    cal: Calibration,
    found: list[Candidate],
    link: Link,
    memory_gib: float | None,
    max_lookahead: int,
    search: bool = True,
) -> list[Candidate]:
    """Each schedule's three best that fit, simulated over the full window; the balances the
    partition search reaches from its best on each kind of balance (``search``); and its best
    with teacher lookahead 2..``max_lookahead`` where the schedule and the teacher allow it."""
    fits = lambda c: memory_gib is None or c.peak_gib <= memory_gib  # noqa: E731
    ranked = sorted((c for c in found if fits(c)), key=lambda c: -c.samples_per_s)
    out, counts = [], {}
    for cand in ranked:  # per schedule and dp
        if counts.get((cand.schedule, cand.dp), 0) < 3:
            counts[(cand.schedule, cand.dp)] = counts.get((cand.schedule, cand.dp), 0) + 1
            out.append(_settle(cal, cand, link))
    best_of = lambda key: max((c for c in out if (c.schedule, c.dp) == key), key=lambda c: c.samples_per_s)  # noqa: E731
    starts: dict[tuple, Candidate] = {}  # each schedule's best settled on each kind of balance
    for cand in out if search else ():
        key = (cand.schedule, cand.dp, cand.partition)
        if key not in starts or cand.samples_per_s > starts[key].samples_per_s:
            starts[key] = cand
    same = lambda c: (c.schedule, c.dp, c.microbatches, c.backward_pieces, c.balance)  # noqa: E731
    for start in starts.values():  # the partition search from each
        searched = _searched(cal, start, link, memory_gib)
        if searched is not None and same(searched) not in {same(c) for c in out}:
            out.append(searched)
    if max_lookahead > 1 and cal.teacher == "ema":
        for name, dp in counts:
            if not get_schedule(name).accepts_lookahead:
                continue
            best = best_of((name, dp))
            for lookahead in range(2, max_lookahead + 1):
                try:
                    out.append(_settle(cal, best, link, lookahead))
                except ValueError:
                    continue
    return [c for c in out if fits(c)]


def _search(
    cal: Calibration, name: str, gpus: int, link: Link, memory_gib: float | None, dp: int = 1
) -> list[Candidate]:
    """Every configuration of one schedule on ``gpus`` stages (times ``dp`` replicas) the early
    stop reaches (over the memory limit included: the caller drops them), the ``PLACED`` best
    that fit with their teacher forwards placed."""
    found: list[Candidate] = []
    fits = lambda c: memory_gib is None or c.peak_gib <= memory_gib  # noqa: E731
    options: dict[int, list[int | None]] = {}
    for m, p in configurations(cal, name, gpus, dp=dp):
        options.setdefault(m, []).append(p)
    balances: dict[str, list[int] | None] = {"cost": None}
    try:
        balances["uniform"] = uniform_balance(len(cal.student_fwd), gpus)
    except ValueError:
        pass
    balanced: set[tuple] = set()
    for partition, balance in balances.items():
        best, misses = None, 0
        for m, pieces in options.items():
            top = None
            for p in pieces:
                try:
                    sim = simulate_calibration(cal, name, gpus, m, link, balance, p, SEARCH_BATCHES, dp=dp)
                except ValueError:
                    continue
                cand = candidate(cal, sim, partition, dp=dp)
                key = (cand.microbatches, cand.backward_pieces, cand.balance)
                if partition != "cost" and key in balanced:
                    continue  # the uniform split is the balanced one: simulated already
                balanced.add(key)
                found.append(cand)
                if fits(cand) and (top is None or cand.samples_per_s > top.samples_per_s):
                    top = cand
            if top is None:
                continue
            if best is None or top.samples_per_s > best.samples_per_s:
                best, misses = top, 0
            else:
                misses += 1
                if misses == 2:
                    break
    fitting = sorted((c for c in found if fits(c)), key=lambda c: -c.samples_per_s)
    for top in fitting[:PLACED] if get_schedule(name).accepts_early else ():
        balance = None if top.partition == "cost" else list(top.balance)
        sim = simulate_calibration(
            cal,
            name,
            gpus,
            top.microbatches,
            link,
            balance,
            top.backward_pieces,
            SEARCH_BATCHES,
            "auto",
            dp=dp,
        )
        placed = candidate(cal, sim, top.partition, dp=dp)
        if fits(placed) and placed.samples_per_s > top.samples_per_s:
            found[found.index(top)] = placed
    return found


def plan(
    cal: Calibration,
    gpus: int,
    memory_gib: float | None = None,
    names: Sequence[str] | None = None,
    link: Link | None = None,
    ddp: bool = True,
    max_lookahead: int = 1,
    hybrid: bool = False,
    partition_search: bool = True,
) -> list[Candidate]:
    """The configurations that fit ``memory_gib`` (None: no limit), fastest first (ties: less
    memory first): each schedule's three best of the search, simulated over the full window
    (see the module docstring).

    Args:
        cal: the pair's calibration.
        gpus: GPUs to plan for.
        memory_gib: per-GPU memory limit.
        names: schedules to consider (default: every one of the registry that can run the pair).
        link: the link between GPUs (default: :class:`core.link.Link`'s).
        ddp: also model data parallelism (when ``names`` is None, or names it).
        max_lookahead: also try the tspipe family's teacher lookahead up to this L (EMA teachers).
        hybrid: also try dp replicas of a ``gpus / dp``-stage pipeline (dp >= 2, 2 stages or more).
        partition_search: also search the balance around each schedule's best (slower).

    Raises:
        ValueError: for ``gpus < 1``, a limit <= 0, ``max_lookahead < 1``, or a schedule that
            cannot run on ``gpus``.
    """
    if not isinstance(max_lookahead, int) or max_lookahead < 1:
        raise ValueError(f"max_lookahead must be an integer >= 1, got {max_lookahead!r}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be an integer >= 1, got {gpus!r}")
    if memory_gib is not None and memory_gib <= 0:
        raise ValueError(f"memory limit must be > 0 GiB, got {memory_gib}")
    link = link or Link()
    ddp_names = {s.name for s in schedules("ddp")}
    wanted = list(names) if names else None
    pipelines = pipeline_schedules(gpus, [n for n in wanted if n not in ddp_names] if wanted else None)
    if wanted and not pipelines and not set(wanted) & ddp_names:
        raise ValueError(f"none of {', '.join(wanted)} runs as a pipeline on {gpus} GPUs")
    blocks = min(len(cal.teacher_fwd), len(cal.student_fwd))
    found: list[Candidate] = []
    shapes = [(gpus, 1)] if gpus <= blocks else []
    if hybrid:
        shapes += [(gpus // d, d) for d in divisors(gpus) if 2 <= d <= gpus // 2 and gpus // d <= blocks]
    for stages, dp in shapes:
        if cal.batch % dp == 0:
            names = (
                pipelines
                if dp == 1
                else pipeline_schedules(stages, [n for n in wanted if n not in ddp_names] if wanted else None)
            )
            for name in names:
                found += _search(cal, name, stages, link, memory_gib, dp)
    if shapes:
        found = _settled(cal, found, link, memory_gib, max_lookahead, partition_search)
    if ddp and gpus >= 2 and cal.student_params and (not wanted or set(wanted) & ddp_names):
        found.append(ddp_candidate(cal, gpus, link))
    fitting = [c for c in found if memory_gib is None or c.peak_gib <= memory_gib]
    return sorted(fitting, key=lambda c: (-c.samples_per_s, c.peak_gib))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", required=True, help="a calibration file (base or sweep)")
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--memory-gib", type=float, default=None, help="per-GPU memory limit")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--schedules", nargs="+", default=None, help="default: every one that fits")
    parser.add_argument("--model", choices=("realistic", "linear"), default="realistic")
    parser.add_argument("--link-gbps", type=float, default=Link().gbps)
    parser.add_argument("--top", type=int, default=20, help="rows of the table (0: all)")
    parser.add_argument(
        "--max-lookahead", type=int, default=1, help="also try teacher lookahead 2..L (EMA teachers; staler)"
    )
    parser.add_argument("--hybrid", action="store_true", help="also try dp replicas of shorter pipelines")
    parser.add_argument(
        "--no-partition-search", action="store_true", help="only the cost and uniform balances (faster)"
    )
    args = parser.parse_args(argv)
    try:
        cal = load_calibration(args.calibration, args.model)
        ranked = plan(
            cal,
            args.gpus,
            args.memory_gib,
            args.schedules,
            Link(args.link_gbps),
            max_lookahead=args.max_lookahead,
            hybrid=args.hybrid,
            partition_search=not args.no_partition_search,
        )
    except (OSError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if not ranked:
        limit = f" within {args.memory_gib:g} GiB" if args.memory_gib else ""
        print(f"error: no configuration of {cal.pair} fits {args.gpus} GPUs{limit}", file=sys.stderr)
        return 1
    if args.format == "json":
        best = {"best": ranked[0].to_dict(), "per_schedule": [c.to_dict() for c in per_schedule(ranked)]}
        print(json.dumps({"pair": cal.pair, "calibration": cal.source, "cost_model": cal.cost_model, **best}))
    else:
        print(f"{cal.pair} ({cal.cost_model}) on {args.gpus} GPUs, {len(ranked)} configurations fit:")
        print(table(ranked, args.top or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
