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

``python -m experiments.staleness METHOD [--lookaheads 0 1 2 4] [--seeds 0 1 2] [--preset P] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import write_rows
from experiments.accuracy import AccuracyRun, initial_rows, run_matrix
from methods.registry import get_method


def label(lookahead: int) -> str:
    """The rows' label of lookahead L."""
    return f"L{lookahead}"


def staleness_runs(lookaheads: Sequence[int], seeds: Sequence[int]) -> list[AccuracyRun]:
    """One run per (seed, L), seeds outermost (a cut-short matrix still has whole seeds).

    Raises:
        ValueError: for an L below 0, a repeated L or seed, or no L 0 (the pairs' base).
    """
    if any(L < 0 for L in lookaheads) or len(set(lookaheads)) != len(lookaheads):
        raise ValueError(f"lookaheads must be distinct integers >= 0, got {list(lookaheads)}")
    if 0 not in lookaheads:
        raise ValueError("lookaheads must include 0: the paired differences are taken against it")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    return [
        AccuracyRun(label(L), "tspipe", (f"pipeline.teacher_lookahead={L}",), seed)
        for seed in seeds
        for L in lookaheads
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.staleness", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("method", help="a method with an EMA teacher (byol, moco_v3)")
    parser.add_argument("--preset", default="accuracy")
    parser.add_argument("--lookaheads", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/METHOD/staleness")
    parser.add_argument("--command", default=None, help="what the rows say made them (default: this command)")
    args = parser.parse_args(argv)
    try:
        get_method(args.method).preset(args.preset)  # an unknown method or preset fails here
        runs = staleness_runs(args.lookaheads, args.seeds)
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / args.method / "staleness"
    command = args.command or f"python -m experiments.staleness {args.method} --preset {args.preset}"
    rows = run_matrix(args.method, args.preset, runs, out, args.parallel, command)
    write_rows(out / "rows.jsonl", rows + initial_rows(args.method, args.preset, args.seeds, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
