"""Engine overhead: the engine's one-stage ``sequential`` step against a plain PyTorch loop on
the same task, model, batch, precision and optimiser (median step after warm-up).

Usage: ``python -m experiments.gpucheck METHOD [--preset NAME] [--steps 20] [--out DIR]
[key=value ...]``; the default preset is the method's benchmark preset for CUDA (DistilBERT:
``gpucheck``, BERT-large-shaped teacher into a 6-layer BERT-base-width student). ``device=cpu``
with small shapes runs it as a dry run anywhere. Rows go to ``DIR/rows.jsonl`` (default
``results/gpu-overhead/METHOD``); the H200 calibration's sequential step of the matching pair is
written beside them when one is named.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from core.config import Config
from core.metrics import make_row, write_rows
from core.momentum import ema_update_
from core.overrides import ConfigError, apply_overrides
from core.runtime import make_runner, prepare_models
from core.task import upcast
from methods.registry import get_method
from methods.spec import MethodSpec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(x, device: torch.device):
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def batches_of(run, steps: int) -> list:
    """Every step's batch, made before any timing: both runners then time the same work (the
    engine's step would otherwise include making the next batch, which the plain loop's does
    not; on the H200 the engine measured 8-17 % slower with it, how much of that was making
    batches is not known yet)."""
    return list(run.batches(0, steps))


def plain_loop(spec: MethodSpec, config: Config, steps: int, device: torch.device) -> list[float]:
    """Step times (s) of a plain loop: teacher forward without grad, student forward and
    backward over every view, the method's loss, clipping, the optimiser and the EMA update; no
    engine."""
    run = spec.setup(config)
    task = run.task
    student_blocks, teacher_blocks = prepare_models(task)
    student, teacher = nn.Sequential(*student_blocks).to(device), nn.Sequential(*teacher_blocks).to(device)
    optimizer = run.optimizer(list(student.named_parameters()))
    amp = config.pipeline.amp_bf16
    clip = config.pipeline.max_grad_norm
    times = []
    for step, batch in enumerate(batches_of(run, steps)):
        _sync(device)
        start = time.perf_counter()
        s_in, t_in = task.split_inputs(batch, step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                t_out = [upcast(teacher(_to(x, device))) for x in t_in]
            s_out = [upcast(student(_to(x, device))) for x in s_in]
        loss = task.loss(s_out, t_out, task.loss_context(batch, step))["loss"]
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(student.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if task.teacher_rule.kind == "ema":
            ema_update_(teacher, student, task.teacher_rule.momentum(step))
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def engine_sequential(spec: MethodSpec, config: Config, steps: int, device: torch.device) -> list[float]:
    """Step times (s) of the engine's ``sequential`` schedule on one stage, same task and data."""
    config = replace(
        config, pipeline=replace(config.pipeline, schedule="sequential", stages=1, microbatches=1)
    )
    run = spec.setup(config)
    runner = make_runner(run.task, config.pipeline, device, run.optimizer, run.scheduler)
    ends: list[float] = []

    def on_step(b: int, losses: dict | None) -> None:
        _sync(device)
        ends.append(time.perf_counter())

    batches = batches_of(run, steps)
    _sync(device)
    start = time.perf_counter()
    runner.run(iter(batches), steps, on_step)
    runner.close()
    return [b - a for a, b in zip([start, *ends], ends)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.gpucheck", description=__doc__)
    parser.add_argument("method")
    parser.add_argument("--preset", default=None, help="default: the method's CUDA benchmark preset")
    parser.add_argument("--steps", type=int, default=20, help="steps per runner (the first 5 are warm-up)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = parser.parse_args(argv)
    try:
        spec = get_method(args.method)
        preset = args.preset or spec.bench_presets.get("cuda") or spec.default_preset
        config = apply_overrides(spec.preset(preset), [f"run.steps={args.steps}", *args.overrides])
        spec.check(config)
        if config.run.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("no CUDA device: run this on a GPU machine, or pass device=cpu amp_bf16=false")
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    device = torch.device(config.run.device)
    warmup = min(5, args.steps - 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or Path("results/gpu-overhead") / spec.name
    rows = []
    described = spec.setup(config)
    model, batch = described.model, described.samples_per_step
    for runner, measure in (("plain-loop", plain_loop), ("engine-sequential", engine_sequential)):
        times = measure(spec, config, args.steps, device)
        step_ms = 1e3 * statistics.median(times[warmup:])
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(
            make_row(
                method=spec.name,
                schedule="sequential",
                model=model,
                stages=1,
                microbatches=1,
                global_batch=batch,
                device=name,
                samples_per_s=batch / step_ms * 1e3,
                step_ms=step_ms,
                peak_mem_gib=peak,
                seed=config.run.seed,
                simulated=False,
                runner=runner,
                amp_bf16=config.pipeline.amp_bf16,
                warmup_steps=warmup,
                timed_steps=len(times) - warmup,
            )
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        print(f"{runner}: {step_ms:.1f} ms/step ({batch / step_ms * 1e3:.0f} samples/s)", file=sys.stderr)
    overhead = rows[1]["step_ms"] / rows[0]["step_ms"] - 1
    rows = [{**r, "engine_overhead": overhead} for r in rows]
    write_rows(out / "rows.jsonl", rows)
    print(f"engine overhead: {100 * overhead:+.1f}% ({out / 'rows.jsonl'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
