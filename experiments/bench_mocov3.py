"""`make bench-mocov3`: every schedule, ddp and the torch pipelining peer on MoCo-v3, side by side.

CPU default: the small ViT of ``experiments/moco_v3.py`` (patch 4, width 96, 4 blocks, 3 heads)
on real Fashion-MNIST batches (32x32, two augmented views per image), batch 64, 2 processes with
one thread each, micro-batches 2 and 4. On GPUs the same command takes ``--device cuda --nproc 4
--model vit_base --image 224 --batch 256`` (synthetic 224x224 images, bf16, 16x16 patches, each
block split into attention and MLP halves, 4096/256 heads, as the paper's throughput runs).

GPU check (one GPU, under 5 minutes): the sequential row against
``experiments/calibration/h200/mocov3_vit_base_bf16.json`` (2081 img/s for one view of a
sequential step on an H200, so about 1040 img/s for MoCo-v3's two views)::

    python -m experiments.bench_mocov3 --device cuda --nproc 1 --model vit_base --no-half-blocks \
        --schedules sequential tspipe --microbatches 1 4 --out results/moco_v3-gpu-check
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiments.benchmark import BenchSpec, run_benchmark
from methods.common.config import ConfigError, build_config
from methods.moco_v3.train import METHOD, model_name

MODELS = ("vit_cpu", "vit_small", "vit_base", "vit_large")


def overrides_for(model: str, image: int, batch: int, device: str, half_blocks: bool | None) -> list[str]:
    """Config overrides of the ``cpu`` preset for one benchmark model.

    ``vit_cpu`` keeps the preset's small ViT and trains on Fashion-MNIST when the images are
    small and the device a CPU; the timm sizes take their own shape, 16x16 patches and MoCo-v3's
    4096/256 heads on synthetic images. ``half_blocks`` None: halves for the timm sizes only.
    """
    gpu = device == "cuda"
    real = model == "vit_cpu" and not gpu and image <= 64
    out = [
        f"image={image}",
        f"batch={batch}",
        f"dataset={'fashion_mnist' if real else 'synthetic'}",
        f"device={device}",
        f"amp_bf16={gpu}",
    ]
    if model != "vit_cpu":
        out += [f"vit={model}", "patch=16", "embed_dim=0", "depth=0", "heads=0"]
        out += ["proj_hidden=4096", "proj_dim=256", "pred_hidden=4096"]
    halves = model != "vit_cpu" if half_blocks is None else half_blocks
    out.append(f"half_blocks={halves}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_mocov3", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="pipeline stages (processes)")
    parser.add_argument("--model", default="vit_cpu", choices=MODELS)
    parser.add_argument("--image", type=int, default=None, help="default: 32 for vit_cpu, else 224")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 256 on GPU")
    parser.add_argument(
        "--microbatches", type=int, nargs="+", default=None, help="default: 2 and 4 on CPU, M = N on GPU"
    )
    parser.add_argument(
        "--schedules", nargs="+", default=None, help="schedules and runners to measure (default: all)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pieces", type=int, default=None, help="tspipe backward pieces (default: 1 on CPU, 2 on GPU)"
    )
    parser.add_argument(
        "--half-blocks",
        dest="half_blocks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="attention and MLP halves as separate units (default: on for the timm sizes)",
    )
    parser.add_argument("--out", default="results/moco_v3")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    image = args.image or (32 if args.model == "vit_cpu" else 224)
    batch = args.batch or (256 if gpu else 64)
    overrides = overrides_for(args.model, image, batch, args.device, args.half_blocks)
    try:  # fail before anything starts on sizes that do not fit
        config = build_config(METHOD.config_cls, METHOD.presets["cpu"], overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = BenchSpec(
        method="moco_v3",
        model=model_name(config),
        module="methods.moco_v3.bench",
        options={"preset": "cpu", "overrides": overrides},
        batch=batch,
        stages=args.nproc,
        microbatches=tuple(args.microbatches or ([args.nproc] if gpu else [2, 4])),
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        device=args.device,
        threads=1 if not gpu else 4,
        amp_bf16=gpu,
        synthetic=config.dataset == "synthetic",
        backward_pieces=args.pieces if args.pieces is not None else (2 if gpu else 1),
        out=args.out,
        **({"schedules": tuple(args.schedules)} if args.schedules else {}),
    )
    run_benchmark(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
