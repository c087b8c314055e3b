"""Throughput benchmark driver shared by every ``make bench-*`` target.

The driver profiles per-block costs once (in this process), fixes the partition from them, then
launches one timed run per schedule (``python -m core.launch --nproc N experiments.benchmark
worker ...``) so every schedule runs the same task, partition, data and thread budget, side by
side in one invocation. It writes result rows (JSON lines), the measured and simulated timelines,
and leaves tables and plots to ``analysis.bench``.

A benchmark's task comes from a *task module* with one function::

    build(options: dict) -> Workload

so the workers can rebuild it from JSON options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.bench import (
    BlockCosts,
    bound_samples_per_s,
    median_step_s,
    predict,
    probe_link,
    profile_blocks,
    timed_run,
)
from core.config import PipelineConfig
from core.metrics import TimelineRecord, make_row, steady_state, write_rows
from core.partition import plan_partition
from core.simulate import Link
from core.task import Task

ROOT = Path(__file__).resolve().parent.parent
# Link between processes when no probe ran (one process): not used by any prediction then.
DEFAULT_LINK = Link(gbps=1.0, latency_us=100.0)


@dataclass
class Workload:
    """What a task module builds for the benchmark.

    Attributes:
        task: the task.
        batches: ``batches(steps)`` returns an iterable of ``steps`` data batches.
        optimizer: optimizer factory from named parameters.
        scheduler: optional learning-rate scheduler factory.
    """

    task: Task
    batches: Callable[[int], Any]
    optimizer: Callable[[list[tuple[str, torch.nn.Parameter]]], torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None


@dataclass
class BenchSpec:
    """One benchmark invocation.

    Attributes:
        method: row ``method``.
        model: row ``model``.
        module: task module (``build(options) -> Workload``).
        options: JSON options for ``build``.
        batch: samples per mini-batch (images or sequences; views not counted).
        stages: pipeline stages (processes) of the pipelined runs.
        microbatches: micro-batch counts swept for gpipe, 1f1b, tspipe and the torch peer.
        schedules: schedules and runners to measure.
        warmup: steps before timing starts.
        steps: timed steps.
        device: ``cpu`` or ``cuda``.
        threads: torch threads per process.
        amp_bf16: bf16 autocast.
        synthetic: whether inputs are synthetic (labelled in rows).
        out: folder for rows and timelines.
        seed: recorded in rows.
        backward_pieces: backward pieces for the pipeline schedules that split backwards
            (``tspipe``); None keeps each schedule's default.
        rounds: times every run is repeated (interleaved with the others); the median counts.
        extra: more row fields.
    """

    method: str
    model: str
    module: str
    options: dict
    batch: int
    stages: int = 2
    microbatches: tuple[int, ...] = (4,)
    schedules: tuple[str, ...] = (
        "sequential",
        "mp",
        "gpipe",
        "1f1b",
        "tspipe",
        "ddp",
        "torch-gpipe",
        "torch-1f1b",
    )
    warmup: int = 3
    steps: int = 10
    device: str = "cpu"
    threads: int = 1
    amp_bf16: bool = False
    synthetic: bool = True
    out: str = "results/bench"
    seed: int = 0
    backward_pieces: int | None = None
    rounds: int = 2
    extra: dict = field(default_factory=dict)


def method_workload(method: Any, options: dict) -> Workload:
    """The workload of a trainer ``Method`` (``methods.common.trainer``): ``options`` holds a
    ``preset`` name and ``overrides`` (``key=value`` strings)."""
    from methods.common.config import build_config

    config = build_config(
        method.config_cls, method.presets[options["preset"]], list(options.get("overrides", []))
    )
    run = method.setup(config)
    return Workload(run.task, lambda steps: run.batches(0, steps), run.optimizer, run.scheduler)


def load_workload(module: str, options: dict) -> Workload:
    """Import a task module and build its workload."""
    return importlib.import_module(module).build(options)


def runs(spec: BenchSpec) -> list[tuple[str, int, int]]:
    """(schedule, processes, micro-batches) of every run the spec asks for."""
    out = []
    for schedule in spec.schedules:
        if schedule == "sequential":  # one per M: it calibrates the profiled costs (see _scaled)
            out += [(schedule, 1, m) for m in spec.microbatches]
        elif schedule == "mp":
            out.append((schedule, spec.stages, 1))
        elif schedule == "ddp":
            out.append((schedule, spec.stages, 1))
        else:
            out += [(schedule, spec.stages, m) for m in spec.microbatches]
    return out


def unit_microbatches(schedule: str, processes: int, micro: int) -> int:
    """Micro-batches a run's unit size corresponds to (ddp: one share per replica)."""
    return processes if schedule == "ddp" else micro


def _balances(spec: BenchSpec, costs: BlockCosts, task: Task) -> tuple[list[int], list[int]]:
    partition = plan_partition(
        spec.stages,
        [f + b for f, b in zip(costs.student_fwd, costs.student_bwd)],
        costs.teacher_fwd,
        task.teacher_rule.kind,
        student_extra=task.predictor_blocks,
    )
    return list(partition.student), list(partition.teacher)


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def run_benchmark(spec: BenchSpec) -> list[dict]:
    """Profile, run every schedule, and write rows and timelines under ``spec.out``.

    Returns:
        The rows written.

    Raises:
        RuntimeError: if a run fails (its output is shown).
    """
    out = Path(spec.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    work = load_workload(spec.module, spec.options)
    first = next(iter(work.batches(1)))
    plan = runs(spec)
    costs: dict[int, BlockCosts] = {}
    for schedule, procs, micro in plan:
        m = unit_microbatches(schedule, procs, micro)
        if m not in costs:
            _progress(f"profiling blocks at {spec.batch // m} samples per unit")
            costs[m] = profile_blocks(work.task, first, m, work.optimizer, device, amp_bf16=spec.amp_bf16)
    balance, teacher_balance = _balances(spec, costs[max(spec.microbatches)], work.task)
    # one launch per process count runs every config of that count, in rounds, interleaved, so
    # slow drifts of the machine hit every schedule alike; the median round counts
    groups: dict[int, list[dict]] = {}
    for schedule, procs, micro in plan:
        pieces = spec.backward_pieces if schedule in ("gpipe", "1f1b", "tspipe") else None
        pipelined = procs == spec.stages and schedule != "ddp"
        groups.setdefault(procs, []).append(
            dict(
                name=f"{schedule}_N{procs}_M{micro}",
                schedule=schedule,
                stages=procs,
                microbatches=micro,
                backward_pieces=pieces,
                amp_bf16=spec.amp_bf16,
                record_timeline=True,
                balance=balance if pipelined else None,
                teacher_balance=teacher_balance if pipelined else None,
            )
        )
    results: dict[tuple[str, int, int], dict] = {}
    for procs, configs in groups.items():
        _progress(
            f"{len(configs)} run(s) on {procs} process(es), {spec.rounds} round(s) of "
            f"{spec.warmup} warm-up + {spec.steps} timed steps each"
        )
        spec_file = out / "runs" / f"N{procs}.spec.json"
        spec_file.write_text(
            json.dumps({"spec": asdict(spec), "configs": configs, "folder": str(out / "runs")})
        )
        started = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "core.launch",
                "--nproc",
                str(procs),
                "experiments.benchmark",
                "worker",
                str(spec_file),
            ],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(spec.threads)},
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"runs on {procs} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
            )
        for cfg in configs:
            rounds = [
                json.loads((out / "runs" / f"{cfg['name']}.r{r}.json").read_text())
                for r in range(spec.rounds)
            ]
            key = (cfg["schedule"], procs, cfg["microbatches"])
            results[key] = _combine(rounds, spec.warmup)
            step = results[key]["median_step_s"]
            _progress(
                f"{cfg['name']}: {spec.batch / step:.1f} samples/s (rounds: "
                + ", ".join(f"{spec.batch / s:.0f}" for s in results[key]["round_steps_s"])
                + ")"
            )
        _progress(f"{procs} process(es) done in {time.monotonic() - started:.0f} s")
    scales = _calibration(spec, work.task, results, costs)
    rows = [
        _row(
            spec,
            work.task,
            schedule,
            procs,
            micro,
            result,
            _scaled(costs, scales, schedule, procs, micro),
            out,
        )
        for (schedule, procs, micro), result in results.items()
    ]
    write_rows(out / "rows.jsonl", rows)
    (out / "costs.json").write_text(
        json.dumps(
            {
                "scales": {str(m): k for m, k in scales.items()},
                **{str(m): c.to_dict() for m, c in costs.items()},
            },
            indent=1,
        )
    )
    return rows


def _combine(rounds: list[dict], warmup: int) -> dict:
    """One result from several rounds of a run: the median of the rounds' median steps, and the
    last round's timeline."""
    steps = [median_step_s(r["step_end_s"], warmup) for r in rounds]
    last = rounds[-1]
    return {**last, "median_step_s": statistics.median(steps), "round_steps_s": steps}


def _calibration(
    spec: BenchSpec, task: Task, results: dict, costs: dict[int, BlockCosts]
) -> dict[int, float]:
    """Measured over profiled time of the sequential run at each M: how much slower the blocks
    run inside a training step (colder caches, allocation) than timed one by one."""
    scales = {}
    for (schedule, _, micro), result in results.items():
        if schedule == "sequential":
            predicted = spec.batch / bound_samples_per_s(costs[micro], micro * task.views, spec.batch, 1)
            scales[micro] = result["median_step_s"] / predicted
    return scales


def _scaled(
    costs: dict[int, BlockCosts], scales: dict[int, float], schedule: str, procs: int, micro: int
) -> BlockCosts:
    """The run's block costs, times the calibration of the sequential run nearest in unit size
    (1 without a sequential run)."""
    m = unit_microbatches(schedule, procs, micro)
    base = costs[m]
    if not scales:
        return base
    k = scales[min(scales, key=lambda s: abs(s - m))]
    return BlockCosts(
        samples=base.samples,
        teacher_fwd=[x * k for x in base.teacher_fwd],
        student_fwd=[x * k for x in base.student_fwd],
        student_bwd=[x * k for x in base.student_bwd],
        teacher_bytes=base.teacher_bytes,
        student_bytes=base.student_bytes,
        loss_ms=base.loss_ms * k,
        opt_ms=[x * k for x in base.opt_ms],
        param_bytes=base.param_bytes,
    )


def _row(
    spec: BenchSpec,
    task: Task,
    schedule: str,
    procs: int,
    micro: int,
    result: dict,
    unit_costs: BlockCosts,
    out: Path,
) -> dict:
    name = f"{schedule}_N{procs}_M{micro}"
    step_s = result["median_step_s"]
    samples = spec.batch / step_s
    units = (1 if schedule == "ddp" else micro) * task.views
    bound = bound_samples_per_s(unit_costs, units, spec.batch, procs)
    if schedule == "ddp":  # one replica's work on its share, times the replicas
        bound = bound_samples_per_s(unit_costs, task.views, spec.batch // procs, 1) * procs
    link = Link(**result["extra"]["link"]) if "link" in result["extra"] else DEFAULT_LINK
    config = PipelineConfig(
        schedule=schedule,
        stages=procs,
        microbatches=micro,
        backward_pieces=result["extra"].get("backward_pieces"),
        balance=tuple(result["extra"]["balance"]) if result["extra"].get("balance") else None,
    )
    balance = result["extra"].get("balance") or [len(unit_costs.student_fwd)]
    teacher_balance = result["extra"].get("teacher_balance") or [len(unit_costs.teacher_fwd)]
    predicted, sim_records = (None, [])
    if schedule == "ddp" or procs == len(balance):
        predicted, sim_records = predict(
            schedule,
            unit_costs,
            config,
            task.views,
            task.teacher_rule.kind,
            spec.batch,
            balance,
            teacher_balance,
            link,
        )
    records = [TimelineRecord(**r) for r in result["records"]]
    bubble = None
    if schedule in ("sequential", "mp", "gpipe", "1f1b", "tspipe"):
        try:
            _, bubble = steady_state(records, procs, spec.warmup, spec.warmup + spec.steps - 2)
        except ValueError:
            bubble = None
    keep = schedule in ("gpipe", "tspipe")  # the timelines the reports draw
    if keep:
        write_rows(out / "timelines" / f"{name}.measured.jsonl", result["records"])
    if keep and sim_records:
        write_rows(
            out / "timelines" / f"{name}.simulated.jsonl",
            [r for r in sim_records if not r["op"].startswith(("SEND", "RECV"))],
        )
    device = f"{spec.device} ({spec.threads} thread{'s' if spec.threads > 1 else ''}/process)"
    if spec.device == "cuda":
        device = torch.cuda.get_device_name(0)
    return make_row(
        method=spec.method,
        schedule=schedule,
        model=spec.model,
        stages=procs,
        microbatches=micro,
        global_batch=spec.batch,
        device=device,
        samples_per_s=samples,
        step_ms=step_s * 1e3,
        efficiency=samples / bound,
        bound_samples_per_s=bound,
        bubble_fraction=bubble,
        peak_mem_gib=result["peak_gib"],
        seed=spec.seed,
        simulated=False,
        predicted_samples_per_s=predicted,
        prediction_error=(predicted - samples) / samples if predicted else None,
        backward_pieces=config.pieces,
        balance=result["extra"].get("balance"),
        teacher_balance=result["extra"].get("teacher_balance"),
        link_gbps=link.gbps if "link" in result["extra"] else None,
        link_latency_us=link.latency_us if "link" in result["extra"] else None,
        synthetic_inputs=spec.synthetic,
        amp_bf16=spec.amp_bf16,
        warmup_steps=spec.warmup,
        timed_steps=spec.steps,
        rounds=spec.rounds,
        round_samples_per_s=[spec.batch / x for x in result["round_steps_s"]],
        **spec.extra,
    )


def worker(spec_file: Path) -> None:
    """One rank of a group of timed runs (started by ``core.launch``): every config, in rounds."""
    from core.engine import make_runner
    from core.launch import init_distributed

    group = json.loads(spec_file.read_text())
    spec = BenchSpec(**{**group["spec"], "microbatches": tuple(group["spec"]["microbatches"])})
    torch.set_num_threads(spec.threads)
    rank = init_distributed(spec.device)
    work = load_workload(spec.module, spec.options)
    link: dict[str, float] = {}
    if rank.world > 1:
        measured = probe_link(1 << 20)
        link = {"gbps": measured.gbps, "latency_us": measured.latency_us}
    total = spec.warmup + spec.steps
    for r in range(spec.rounds):
        for cfg in group["configs"]:
            config = PipelineConfig(
                **{
                    **{k: v for k, v in cfg.items() if k != "name"},
                    "balance": tuple(cfg["balance"]) if cfg["balance"] else None,
                    "teacher_balance": tuple(cfg["teacher_balance"]) if cfg["teacher_balance"] else None,
                }
            )
            runner = make_runner(work.task, config, rank.device, work.optimizer, work.scheduler)
            extra: dict[str, Any] = {"backward_pieces": config.backward_pieces}
            if link:
                extra["link"] = link
            if hasattr(runner, "balance"):  # pipelines; ddp holds whole models
                extra["balance"], extra["teacher_balance"] = (
                    list(runner.balance),
                    list(runner.teacher_balance),
                )
            out = Path(group["folder"]) / f"{cfg['name']}.r{r}.json"
            timed_run(runner, work.batches(total), total, out if rank.rank == 0 else None, extra)
            runner.close()
            del runner


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        worker(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__)
    parser.add_argument("spec", type=Path, help="a BenchSpec as JSON")
    args = parser.parse_args(argv)
    data = json.loads(args.spec.read_text())
    run_benchmark(BenchSpec(**{**data, "microbatches": tuple(data.get("microbatches", (4,)))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
