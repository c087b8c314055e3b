"""Staleness as a knob (``make staleness-byol``, ``make staleness-mocov3``): a method with an
EMA teacher trained under ``tspipe`` with teacher lookahead L for each L of ``--lookaheads``
(0, 1, 2, 4), so that the teacher serving mini-batch b is version max(0, b - L): L = 0 is the
exact synchronous teacher, L = 1 TSPipe's one-step relaxation.

Every L runs the same seeds, and a seed fixes the data order, the augmentations and the initial
weights, so the runs of one seed differ only in the teacher's staleness (paired seeds). Each
run is one process on one stage (``tspipe`` on one stage serves exactly the teacher versions it
serves on several: the engine's tests at L = 0, 1, 2 on 1, 2 and 4 processes), one thread,
two at a time (``experiments.accuracy.run_matrix``); rows land in ``OUT/rows.jsonl`` labelled
``L0``, ``L1``, ..., beside each seed's initial weights evaluated (label ``init``: what
training gains); ``python -m analysis.staleness OUT`` makes the table and the plot.

``--set KEY=VALUE ...`` adds config overrides to every run and to the initial weights' rows (a
longer budget than the preset's without a new preset: ``make staleness-mocov3`` trains on 20,000
images instead of the accuracy preset's 10,000); the rows list them under ``overrides``, and
their config digest covers them, so a sweep with other overrides is not resumed from these.

``--symmetric`` adds, per seed, the paper's symmetric ablation beside the curve: L = 1 with the
student's gradients also applied one step late (``training.delay``; label ``symmetric``), so
the price of delaying the student is measured on the same seeds as the teacher's staleness.

``--extend`` grows a sweep: the runs asked for, plus every run already in ``OUT/rows.jsonl``
(``--seeds 3 4 --lookaheads 0 1 --symmetric --extend`` adds two seeds to the pairs that price
tspipe and the symmetric ablation, keeping L = 2 and 4 of the first seeds).

``python -m experiments.staleness METHOD [--lookaheads 0 1 2 4] [--seeds 0 1 2] [--preset P] [--set K=V ...] [--symmetric] [--extend] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import read_rows, write_rows
from core.overrides import apply_overrides
from experiments.accuracy import AccuracyRun, initial_rows, run_matrix
from methods.registry import get_method


def label(lookahead: int) -> str:
    """The rows' label of lookahead L."""
    return f"L{lookahead}"


def staleness_runs(
    lookaheads: Sequence[int], seeds: Sequence[int], overrides: Sequence[str] = (), symmetric: bool = False
) -> list[AccuracyRun]:
    """One run per (seed, L), seeds outermost (a cut-short matrix still has whole seeds), each
    with ``overrides`` (``key=value``) after its lookahead; with ``symmetric``, each seed's
    runs end with L = 1 and the student's gradients one step late (label ``symmetric``).

    Raises:
        ValueError: for an L below 0, a repeated L or seed, no L 0 (the pairs' base), or an
            override that is not ``key=value`` or sets the lookahead itself.
    """
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key or key.startswith("-"):
            raise ValueError(f"--set takes key=value config overrides, got {item!r}")
        if key.rpartition(".")[2] == "teacher_lookahead":
            raise ValueError("--set cannot set pipeline.teacher_lookahead: --lookaheads chooses it")
    if any(L < 0 for L in lookaheads) or len(set(lookaheads)) != len(lookaheads):
        raise ValueError(f"lookaheads must be distinct integers >= 0, got {list(lookaheads)}")
    if 0 not in lookaheads:
        raise ValueError("lookaheads must include 0: the paired differences are taken against it")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    runs = []
    for seed in seeds:
        runs += [lookahead_run(L, seed, overrides) for L in lookaheads]
        if symmetric:
            runs.append(symmetric_run(seed, overrides))
    return runs


def lookahead_run(lookahead: int, seed: int, overrides: Sequence[str] = ()) -> AccuracyRun:
    """tspipe at teacher lookahead L."""
    return AccuracyRun(
        label(lookahead), "tspipe", (f"pipeline.teacher_lookahead={lookahead}", *overrides), seed
    )


def symmetric_run(seed: int, overrides: Sequence[str] = ()) -> AccuracyRun:
    """The symmetric ablation: L = 1 and the student's gradients one step late."""
    return AccuracyRun(
        "symmetric", "tspipe", ("pipeline.teacher_lookahead=1", "--student-delay=1", *overrides), seed
    )


def extended(runs: Sequence[AccuracyRun], path: Path, overrides: Sequence[str] = ()) -> list[AccuracyRun]:
    """``runs``, then a run for every (label, seed) of the rows in ``path`` that ``runs`` lack
    (``--extend``: a sweep grown by seeds keeps every run it has; rows that are current are
    kept, not re-run, as always)."""
    out, have = list(runs), {(r.label, r.seed) for r in runs}
    for row in read_rows(path) if path.exists() else []:
        name, seed = row.get("label"), row.get("seed")
        if (name, seed) in have or seed is None:
            continue
        if name == "symmetric":
            out.append(symmetric_run(seed, overrides))
        elif isinstance(name, str) and name[:1] == "L" and name[1:].isdigit():
            out.append(lookahead_run(int(name[1:]), seed, overrides))
        else:  # the initial weights' rows follow the seeds
            continue
        have.add((name, seed))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.staleness", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("method", help="a method with an EMA teacher (byol, moco_v3)")
    parser.add_argument("--preset", default="accuracy")
    parser.add_argument("--lookaheads", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every run and for the initial weights (e.g. method.train_subset=20000)",
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="also L = 1 with the student's gradients one step late (the paper's symmetric ablation)",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="also keep (or redo, if not current) every run already in OUT/rows.jsonl: add seeds to a sweep",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/METHOD/staleness")
    parser.add_argument("--command", default=None, help="what the rows say made them (default: this command)")
    args = parser.parse_args(argv)
    try:
        runs = staleness_runs(args.lookaheads, args.seeds, args.overrides, args.symmetric)
        # an unknown method, preset or override key fails here
        apply_overrides(get_method(args.method).preset(args.preset), args.overrides)
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / args.method / "staleness"
    if args.extend:
        runs = extended(runs, out / "rows.jsonl", args.overrides)
    command = args.command or f"python -m experiments.staleness {args.method} --preset {args.preset}"
    rows = run_matrix(args.method, args.preset, runs, out, args.parallel, command)
    seeds = sorted({r.seed for r in runs})
    init = initial_rows(args.method, args.preset, seeds, command, args.overrides)
    write_rows(out / "rows.jsonl", rows + init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
