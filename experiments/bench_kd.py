"""`make bench-kd`: every schedule, ddp and the torch pipelining peer on soft-target KD, side by side.

CPU default: the `make teacher-kd` teacher (ResNet-18 of width 32, CIFAR stem, trained on
Fashion-MNIST) distilled into a ResNet-18 of width 8, real Fashion-MNIST batches at 16x16,
batch 128, 2 processes with one thread each, micro-batches 2 and 4. The teacher forward is a
large share of each step here (the teacher is 16x the student's parameters), and that share is
what ``tspipe`` can move into the student's pipeline bubbles; it is added to every row
(``teacher_fwd_share``) from the per-block costs profiled in the same run.

On GPUs: ``--device cuda --nproc 4 --model resnet152-to-resnet50`` (the H200 calibration pair)
or ``--model vitl16-to-resnet152`` (the paper's pair), synthetic 224x224 images, bf16, random
teacher weights (``--teacher-checkpoint PATH`` takes real ones).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import read_rows, write_rows
from experiments.benchmark import ROOT, BenchSpec, run_benchmark
from methods.common.config import ConfigError, build_config
from methods.common.data import DataNotFound
from methods.soft_target.train import METHOD, check

# --model: (preset, model label) of each teacher -> student pair
MODELS = {
    "resnet18w32-to-resnet18w8": ("cpu", "resnet18w32-to-resnet18w8"),
    "resnet152-to-resnet50": ("resnet152-to-resnet50-224", "resnet152-to-resnet50"),
    "vitl16-to-resnet152": ("vitl16-to-resnet152-224-4gpu", "vitl16-to-resnet152"),
}


def teacher_share(costs_file: Path) -> dict[str, float]:
    """Share of one mini-batch's compute that is teacher forward, per profiled unit size.

    Returns:
        ``{"M=4": 0.47, ...}``: teacher forward / (teacher forward + student forward + backward).
    """
    costs = json.loads(costs_file.read_text())
    out = {}
    for key, c in costs.items():
        if key == "scales":
            continue
        teacher = sum(c["teacher_fwd"])
        student = sum(c["student_fwd"]) + sum(c["student_bwd"])
        out[f"M={key}"] = teacher / (teacher + student)
    return out


def ensure_teacher(preset: str, overrides: list[str], make: bool) -> int:
    """Check the KD config before anything starts; with ``make``, train the default teacher
    first when it is the one missing.

    Returns:
        0 when the run can start, 2 otherwise (the reason printed on one line).
    """
    try:
        config = build_config(METHOD.config_cls, METHOD.presets[preset], overrides)
        try:
            check(config)
        except ConfigError as err:
            if not (make and "no teacher checkpoint" in str(err) and "make teacher-kd" in str(err)):
                raise
            print("[bench] no teacher checkpoint: training it first (make teacher-kd)", file=sys.stderr)
            made = subprocess.run(
                [sys.executable, "-m", "methods.soft_target.teacher", "--preset", "cpu"], cwd=ROOT
            )
            if made.returncode != 0:
                return made.returncode
            check(config)
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_kd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="pipeline stages (processes)")
    parser.add_argument(
        "--model",
        default=None,
        choices=tuple(MODELS),
        help="default: CPU pair on cpu, resnet152-to-resnet50 on cuda",
    )
    parser.add_argument("--image", type=int, default=None, help="default: 16 on cpu, 224 on cuda")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on cpu, 256 on cuda")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pieces", type=int, default=None, help="tspipe backward pieces (default: 1 on CPU, 2 on GPU)"
    )
    parser.add_argument(
        "--teacher-checkpoint", default="", help="teacher weights (GPU pairs: random without it)"
    )
    parser.add_argument("--out", default="results/soft_target")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    model = args.model or ("resnet152-to-resnet50" if gpu else "resnet18w32-to-resnet18w8")
    preset, label = MODELS[model]
    cpu_pair = preset == "cpu"
    image = args.image or (16 if cpu_pair else 224)
    batch = args.batch or (128 if not gpu else 256)
    overrides = [f"batch={batch}", f"device={args.device}", f"amp_bf16={gpu}"]
    if image != METHOD.presets[preset]["image"]:
        overrides.append(f"image={image}")
    if args.teacher_checkpoint:
        overrides.append(f"teacher_checkpoint={args.teacher_checkpoint}")
    status = ensure_teacher(preset, overrides, make=cpu_pair)
    if status:
        return status
    spec = BenchSpec(
        method="soft_target",
        model=f"{label}-{image}px",
        module="methods.soft_target.bench",
        options={"preset": preset, "overrides": overrides},
        batch=batch,
        stages=args.nproc,
        microbatches=tuple(args.microbatches),
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        device=args.device,
        threads=1 if not gpu else 4,
        amp_bf16=gpu,
        synthetic=not cpu_pair,
        backward_pieces=args.pieces if args.pieces is not None else (2 if gpu else 1),
        out=args.out,
    )
    run_benchmark(spec)
    out = Path(args.out)
    shares = teacher_share(out / "costs.json")
    share = shares[f"M={max(args.microbatches)}"]
    rows = [
        {**r, "teacher_fwd_share": share, "teacher_fwd_share_by_unit": shares}
        for r in read_rows(out / "rows.jsonl")
    ]
    write_rows(out / "rows.jsonl", rows)
    print(
        f"[bench] teacher forward share of a step (what tspipe can hide): {100 * share:.0f}% "
        f"({', '.join(f'{k}: {100 * v:.0f}%' for k, v in shares.items())})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
