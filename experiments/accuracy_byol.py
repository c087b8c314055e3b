"""`make accuracy-byol`: synchronous BYOL against tspipe's one-step-stale teacher, 3 seeds.

Both run the ``accuracy`` preset (``experiments/byol.py``: Fashion-MNIST at 16x16, 10,000
training images, 12 epochs, kNN after every epoch) on one process each, two at a time:
``sequential`` (exact EMA teacher) and ``tspipe`` on one stage, whose teacher for mini-batch t
is the EMA after step t - 2 exactly as on several stages (the engine tests show tspipe's
weights on 1, 2 and 4 processes agree to float rounding). Same seeds, data order,
augmentations and initial weights; one backward piece in both, so staleness is the only
difference. For seed 0 both save the teacher every epoch, and the relative L2 distance between
the two teachers is recorded per epoch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.accuracy import stale_teacher_parity
from experiments.byol import PRESETS

PRESET = "accuracy"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.accuracy_byol", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/byol/accuracy"))
    args = parser.parse_args(argv)
    stale_teacher_parity("byol", PRESET, PRESETS[PRESET], args.seeds, args.out, args.parallel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
