"""`make bench-distilbert`: every schedule, ddp and the torch pipelining peer on masked-LM
distillation, side by side.

CPU default: MiniLM as installed (6 layers, hidden 384; throughput does not depend on the
fine-tune) into a 3-layer student on real 128-token blocks of Shakespeare + KJV, batch 8, 2
processes with one thread each, micro-batches 2 and 4. The engine's schedules and ddp pass dict
units (hidden states, attention mask, masked positions); PyTorch's pipelining passes one tensor
between stages, so the peer runs the same task with ``units=tensor`` (a second pass with its own
sequential calibration, under ``OUT/runs/peer``); its rows are merged into ``OUT/rows.jsonl``,
labelled ``units``.

On GPUs, the paper's shape: ``--device cuda --nproc 4 --model bertlarge --seq 128 --batch 64``
(BERT-large-shaped teacher, random init, into a half-depth student; synthetic tokens).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import read_rows, write_rows
from experiments.benchmark import BenchSpec, run_benchmark
from methods.common.config import build_config
from methods.distilbert.train import METHOD, model_name

ENGINE = ("sequential", "mp", "gpipe", "1f1b", "tspipe", "ddp")
PEER = ("sequential", "torch-gpipe", "torch-1f1b")


def overrides_for(args: argparse.Namespace) -> list[str]:
    """Config overrides of the benchmark's task (on the ``bench`` preset)."""
    gpu = args.device == "cuda"
    out = [f"seq_len={args.seq}", f"batch={args.batch}", f"device={args.device}", f"amp_bf16={gpu}"]
    if args.model == "bertlarge":
        out += [
            "teacher=random",
            "teacher_layers=24",
            "hidden=1024",
            "heads=16",
            "intermediate=4096",
            "student_layers=12",
            "corpus=synthetic",
        ]
    else:
        out += ["teacher=minilm", "student_layers=3", f"corpus={args.corpus}"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_distilbert", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="pipeline stages (processes)")
    parser.add_argument("--model", default="minilm", choices=("minilm", "bertlarge"))
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="sequences per mini-batch")
    parser.add_argument("--corpus", default="shakespeare,kjv", help="text for the minilm pair (or synthetic)")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pieces", type=int, default=None, help="tspipe backward pieces (default: 1 on CPU, 2 on GPU)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the torch pipelining peer")
    parser.add_argument("--out", default="results/distilbert")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    overrides = overrides_for(args)
    config = build_config(METHOD.config_cls, METHOD.presets["bench"], overrides)
    METHOD.check(config)  # tokenise the corpus once, before the workers start
    common = dict(
        method="distilbert",
        model=model_name(config),
        module="methods.distilbert.bench",
        batch=args.batch,
        stages=args.nproc,
        microbatches=tuple(args.microbatches),
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        device=args.device,
        threads=1 if not gpu else 4,
        amp_bf16=gpu,
        synthetic=config.corpus == "synthetic",
        backward_pieces=args.pieces if args.pieces is not None else (2 if gpu else 1),
    )
    out = Path(args.out)
    rows = run_benchmark(
        BenchSpec(
            **common,
            options={"preset": "bench", "overrides": [*overrides, "units=dict"]},
            schedules=ENGINE,
            out=str(out),
            extra={"units": "dict", "seq_len": args.seq},
        )
    )
    if not args.no_peer:
        peer = run_benchmark(
            BenchSpec(
                **common,
                options={"preset": "bench", "overrides": [*overrides, "units=tensor"]},
                schedules=PEER,
                out=str(out / "runs" / "peer"),
                extra={"units": "tensor", "seq_len": args.seq},
            )
        )
        rows = read_rows(out / "rows.jsonl") + [r for r in peer if r["schedule"] != "sequential"]
        write_rows(out / "rows.jsonl", rows)
    print(f"[bench] {len(rows)} rows in {out / 'rows.jsonl'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
