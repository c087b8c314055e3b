"""`make bench-byol`: every schedule, ddp and the torch pipelining peer on BYOL, side by side.

CPU default: a ResNet-18 of width 16 with a CIFAR stem on real Fashion-MNIST batches (32x32,
two augmented views per image), batch 64, 2 processes with one thread each, micro-batches 2 and
4. On GPUs the same command takes ``--device cuda --nproc 4 --model resnet50 --image 224
--batch 256`` (synthetic 224x224 images, as the paper's throughput runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiments.benchmark import BenchSpec, run_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_byol", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="pipeline stages (processes)")
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pieces", type=int, default=None, help="tspipe backward pieces (default: 1 on CPU, 2 on GPU)"
    )
    parser.add_argument("--out", default="results/byol")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    depth = 50 if args.model == "resnet50" else 18
    small = args.image <= 64
    overrides = [
        f"depth={depth}",
        f"image={args.image}",
        f"batch={args.batch}",
        f"cifar_stem={small}",
        f"width={16 if not gpu and small else 64}",
        f"dataset={'fashion_mnist' if small and not gpu else 'synthetic'}",
        f"device={args.device}",
        f"amp_bf16={gpu}",
    ]
    if not small or gpu:
        overrides += ["proj_hidden=4096", "proj_dim=256", "pred_hidden=4096"]
    spec = BenchSpec(
        method="byol",
        model=f"{args.model}{'' if gpu or not small else '-w16'}-{args.image}px",
        module="methods.byol.bench",
        options={"preset": "cpu", "overrides": overrides},
        batch=args.batch,
        stages=args.nproc,
        microbatches=tuple(args.microbatches),
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        device=args.device,
        threads=1 if not gpu else 4,
        amp_bf16=gpu,
        synthetic=not (small and not gpu),
        backward_pieces=args.pieces if args.pieces is not None else (2 if gpu else 1),
        out=args.out,
    )
    run_benchmark(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
