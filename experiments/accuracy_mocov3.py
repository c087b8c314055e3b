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

from experiments.accuracy import stale_teacher_parity
from experiments.moco_v3 import PRESETS

PRESET = "accuracy"
METHOD = "moco_v3"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.accuracy_mocov3", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("results/moco_v3/accuracy"))
    args = parser.parse_args(argv)
    stale_teacher_parity("moco_v3", PRESET, PRESETS[PRESET], args.seeds, args.out, args.parallel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
