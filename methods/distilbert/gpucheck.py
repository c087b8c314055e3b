"""GPU check of issue 7: the engine's one-stage ``sequential`` step against a plain PyTorch loop on
the same task, BERT-large-shaped teacher (random init) into the calibrated 6-layer BERT-base-width
student, 64 x 128 synthetic tokens, bf16, one GPU; both beside the H200 calibration's sequential
step (``experiments/calibration/h200/distil_bertlarge_to_6l_bf16.json``). Under 5 minutes.

Usage: ``python -m methods.distilbert.gpucheck [--steps 20] [--out DIR] [key=value ...]`` (the
``gpucheck`` preset of ``experiments/distilbert.py``; ``device=cpu`` with small shapes runs it as
a dry run anywhere). Rows go to ``DIR/rows.jsonl`` (default ``results/distilbert-gpucheck``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from core.config import PipelineConfig
from core.engine import make_runner
from core.metrics import make_row, write_rows
from core.runtime import prepare_models
from core.task import gather, upcast
from experiments.distilbert import PRESETS
from methods.common.config import ConfigError, build_config
from methods.distilbert.train import METHOD, DistilConfig, model_name, setup

CALIBRATION = (
    Path(__file__).resolve().parents[2] / "experiments/calibration/h200/distil_bertlarge_to_6l_bf16.json"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(config: DistilConfig, steps: int, device: torch.device) -> list[float]:
    """Step times (s) of a plain loop: teacher forward without grad, student forward and backward,
    DistilBERT's loss, clipping, AdamW; no engine."""
    run = setup(config)
    student_blocks, teacher_blocks = prepare_models(run.task)
    student, teacher = nn.Sequential(*student_blocks).to(device), nn.Sequential(*teacher_blocks).to(device)
    optimizer = run.optimizer(list(student.named_parameters()))
    to_device = lambda x: {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)  # noqa: E731
    times = []
    for step, batch in enumerate(run.batches(0, steps)):
        _sync(device)
        start = time.perf_counter()
        s_in, t_in = run.task.split_inputs(batch, step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp_bf16):
            with torch.no_grad():
                t_out = teacher(to_device(t_in[0]))
            s_out = student(to_device(s_in[0]))
        loss = run.task.loss([upcast(gather([s_out]))], [upcast(t_out)], run.task.loss_context(batch, step))[
            "loss"
        ]
        loss.backward()
        if config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def engine_sequential(config: DistilConfig, steps: int, device: torch.device) -> list[float]:
    """Step times (s) of the engine's ``sequential`` schedule on one stage, same task and data."""
    run = setup(config)
    pipeline = PipelineConfig(
        schedule="sequential", stages=1, amp_bf16=config.amp_bf16, max_grad_norm=config.max_grad_norm
    )
    runner = make_runner(run.task, pipeline, device, run.optimizer, run.scheduler)
    ends: list[float] = []

    def on_step(b: int, losses: dict | None) -> None:
        _sync(device)
        ends.append(time.perf_counter())

    _sync(device)
    start = time.perf_counter()
    runner.run(run.batches(0, steps), steps, on_step)
    runner.close()
    return [b - a for a, b in zip([start, *ends], ends)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.distilbert.gpucheck", description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="steps per runner (the first 5 are warm-up)")
    parser.add_argument("--out", type=Path, default=Path("results/distilbert-gpucheck"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the gpucheck preset")
    args = parser.parse_args(argv)
    try:
        config = build_config(DistilConfig, PRESETS["gpucheck"], [f"steps={args.steps}", *args.overrides])
        METHOD.check(config)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("no CUDA device: run this on a GPU machine, or pass device=cpu amp_bf16=false")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(config.device)
    warmup = min(5, args.steps - 2)
    calibration = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for runner, measure in (("plain-loop", plain_loop), ("engine-sequential", engine_sequential)):
        times = measure(config, args.steps, device)
        step_ms = 1e3 * statistics.median(times[warmup:])
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(
            make_row(
                method="distilbert",
                schedule="sequential",
                model=model_name(config),
                stages=1,
                microbatches=1,
                global_batch=config.batch,
                device=name,
                samples_per_s=config.batch / step_ms * 1e3,
                step_ms=step_ms,
                peak_mem_gib=peak,
                seed=config.seed,
                simulated=False,
                runner=runner,
                seq_len=config.seq_len,
                amp_bf16=config.amp_bf16,
                warmup_steps=warmup,
                timed_steps=len(times) - warmup,
                calibration_seq_step_ms=calibration.get("seq_step_ms"),
                calibration_device=calibration.get("device"),
            )
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        print(
            f"{runner}: {step_ms:.1f} ms/step ({config.batch / step_ms * 1e3:.0f} sequences/s)",
            file=sys.stderr,
        )
    if calibration:
        print(
            f"calibration ({calibration.get('device')}): {calibration['seq_step_ms']:.1f} ms/step",
            file=sys.stderr,
        )
    write_rows(args.out / "rows.jsonl", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
