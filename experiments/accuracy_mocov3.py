"""`make accuracy-mocov3`: synchronous MoCo-v3 against tspipe's one-step-stale momentum encoder.

Both run the ``accuracy`` preset (``experiments/moco_v3.py``: the small ViT on Fashion-MNIST at
16x16, 10,000 training images, 20 epochs, kNN on the class token after every epoch) on one
process each, two at a time, 3 seeds: ``sequential`` (exact momentum encoder) and ``tspipe`` on
one stage, whose momentum encoder for mini-batch t is the EMA after step t - 2 exactly as on
several stages (the tests show a 2-process tspipe run equals the one-step-stale reference).
Same seeds, data order, augmentations and initial weights; one backward piece in both, so the
staleness is the only difference. For the first seed both save the momentum encoder every epoch,
and the relative L2 distance between the two is recorded per epoch (rows with metric
``teacher_drift_rel_l2``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import make_row, read_rows, write_rows
from experiments.accuracy import ROOT, AccuracyRun, run_matrix, teacher_drift
from experiments.moco_v3 import PRESETS

PRESET = "accuracy"
METHOD = "moco_v3"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.accuracy_mocov3", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("results/moco_v3/accuracy"))
    args = parser.parse_args(argv)
    preset = PRESETS[PRESET]
    per_epoch = preset["train_subset"] // preset["batch"]
    runs = []
    for seed in args.seeds:
        extra = (f"checkpoint_every={per_epoch}",) if seed == args.seeds[0] else ()
        runs.append(AccuracyRun("sync", "sequential", extra, seed))
        runs.append(AccuracyRun("tspipe", "tspipe", extra, seed))
    run_matrix(METHOD, PRESET, runs, args.out, args.parallel)
    root = ROOT / "runs" / METHOD / f"accuracy-{PRESET}"
    seed = args.seeds[0]
    drift = teacher_drift(root / f"sync-s{seed}", root / f"tspipe-s{seed}")
    rows = read_rows(args.out / "rows.jsonl")
    rows += [
        make_row(
            method=METHOD,
            schedule="tspipe",
            model=rows[0]["model"],
            metric="teacher_drift_rel_l2",
            metric_value=value,
            seed=seed,
            simulated=False,
            epoch=step / per_epoch,
            step=step,
            device="cpu",
        )
        for step, value in drift
    ]
    write_rows(args.out / "rows.jsonl", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
