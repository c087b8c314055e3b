"""The throughput benchmark every ``make bench-*`` target runs: one method (from the method
registry), every schedule of the schedule registry, side by side.

``python -m experiments.bench METHOD [--preset NAME] [--stages N] [--microbatches 1 2 4]
[--schedules ...] [--warmup W] [--steps S] [--rounds R] [--out DIR] [key=value ...]``

The driver profiles per-block costs at every unit size the runs use (in this process), fixes
the partition from them, then launches one group of timed runs per process count
(``core.launch`` of this module's ``worker``), every run on the same task, partition, data and
thread budget, the runs of a group interleaved round by round so slow drifts of the machine hit
every schedule alike. A run's speed is the median of its rounds' medians over the steady-state
steps (no warm-up, no last step); the rows keep every round's value and the spread. Every
process of a bench, driver and workers, keeps the host memory it frees
(:func:`core.allocator.keep_freed_memory`), so a step does not fault its tensors' pages in again
and a run's speed does not depend on what the runs before it in the same process freed.

Predictions: per-block costs as ``fixed + per_sample x size`` fitted over the profiled sizes,
corrected per kind of work by the one-process step's timeline (``core.step_fit``: teacher
forward, student forward and backward each by its own factor, the loss, the update and the
input-making as measured): measured alone for the one-process rows, and measured with the same
one-process step running on every process at once for the others (a block runs slower when
every core is busy), each kind's total split over a pipeline's stages as the stages timed
whole on one process split it (``core.stage_timing``); plus the link's measured per-message
cost, what a message's bytes cost the work running beside them (``core.traffic_probe``: the
copies share the cores' caches), what a wait for a message costs the stage that waited
(``core.wake_probe``: an idle core resumes slower) and the split backward's own measured cost.
Each round is predicted from that round's own one-process runs and compared with that round's
measurement (a drift of the machine between rounds hits both alike); a row's prediction and
error are the medians over the rounds. The rows hold the simulator's
prediction beside each measurement, and the measured and simulated timelines (the last round's);
``analysis.bench`` makes the tables and plots.

The preset (default: the method's benchmark preset for its device) fixes the workload: model,
batch, device, threads, bf16 and the backward pieces of the pipelined schedules.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from core.allocator import keep_freed_memory
from core.bench import bound_samples_per_s, partial_steps, predict, steady_steps, timed_run
from core.config import Config, PipelineConfig
from core.deferral import deferral_factors
from core.link import Link
from core.link_probe import probe_link
from core.metrics import TimelineRecord, make_row, steady_state, write_rows
from core.overrides import ConfigError, apply_overrides, from_dict, to_dict
from core.partition import plan_partition
from core.profile import BlockCosts, fitted_costs, profile_blocks
from core.runtime import prepare_models
from core.schedules import get_schedule, schedules
from core.stage_timing import split_by_stage, stage_times
from core.step_fit import StepFit, apply_fit, fit_step, processes
from core.task import scatter
from core.traffic_probe import probe_traffic
from core.wake_probe import probe_wake
from experiments.drift import probe_ms, run_speeds, speed_factors
from methods.registry import get_method
from methods.spec import MethodSpec, Setup

ROOT = Path(__file__).resolve().parent.parent
# Link between processes when no probe ran (one process): not used by any prediction then.
DEFAULT_LINK = Link(gbps=1.0, latency_us=100.0)
PROGRESS = "[progress] "  # worker lines the driver turns into its progress bar


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark invocation (the workload itself is the method's preset).

    Attributes:
        method: registry name of the method.
        preset: the method's preset that fixes the workload.
        overrides: ``key=value`` overrides of the preset.
        stages: processes of the pipelined runs.
        microbatches: micro-batch counts swept for the schedules that pipeline micro-batches
            (each schedule's best is among them).
        schedules: schedules and runners to measure (empty: every registered one).
        warmup: steps of each round before timing starts.
        steps: steps run after the warm-up in each round; the first of them (measured from the
            end of the warm-up) and the last are not counted (steady state only).
        rounds: times every run is repeated, interleaved with the others; the median of the
            rounds' medians counts, and their spread is kept.
        out: folder for rows and timelines.
        command: the command that made the rows (written into them).
    """

    method: str
    preset: str
    overrides: tuple[str, ...] = ()
    stages: int = 2
    microbatches: tuple[int, ...] = (1, 2, 4)
    schedules: tuple[str, ...] = ()
    warmup: int = 2
    steps: int = 6
    rounds: int = 5
    out: str = "results/bench"
    command: str = ""

    def __post_init__(self) -> None:
        if self.stages < 1 or not self.microbatches or min(self.microbatches) < 1:
            raise ValueError(
                f"need stages >= 1 and micro-batch counts >= 1; got stages={self.stages}, "
                f"microbatches={list(self.microbatches)}"
            )
        if self.steps < 4 or self.rounds < 1 or self.warmup < 0:
            raise ValueError(
                "need steps >= 4 (the first timed step and the last are not steady), rounds >= 1 and "
                f"warmup >= 0; got steps={self.steps}, rounds={self.rounds}, warmup={self.warmup}"
            )

    def config(self) -> Config:
        """The workload: the preset with the overrides applied."""
        return apply_overrides(get_method(self.method).preset(self.preset), list(self.overrides))


class SettingsError(ValueError):
    """Settings the workload cannot run (found once its setup is built): reported, not traced."""


def check_fits(settings: BenchSettings, samples: int) -> None:
    """Every micro-batch count splits a mini-batch of ``samples`` per view.

    Raises:
        SettingsError: naming the counts that do not.
    """
    over = [m for m in settings.microbatches if m > samples]
    if over:
        raise SettingsError(
            f"micro-batch count(s) {over} exceed the {samples} samples of a mini-batch; use at most {samples}"
        )


def reference_schedule() -> str:
    """The one-process schedule every cost profile is calibrated against (the registry's)."""
    return next(s.name for s in schedules("pipeline") if s.stages == 1)


@dataclass(frozen=True)
class BenchRun:
    """One timed run: a schedule on a number of processes at a micro-batch count. A ``busy``
    run is the one-process reference run on every process at once, each alone: it measures the
    per-block costs when every core is busy, as they are in a pipeline."""

    schedule: str
    procs: int
    microbatches: int
    busy: bool = False

    @property
    def name(self) -> str:
        return f"{self.schedule}_N{self.procs}_M{self.microbatches}{'_busy' if self.busy else ''}"

    @property
    def unit_microbatches(self) -> int:
        """Micro-batches the run's unit size corresponds to (ddp: one share per replica)."""
        return self.procs if get_schedule(self.schedule).runner == "ddp" else self.microbatches

    @property
    def pipelined(self) -> bool:
        """A pipeline over the benchmark's stages (it gets the profiled partition)."""
        return get_schedule(self.schedule).runner != "ddp" and self.procs > 1 and not self.busy


def plan_runs(settings: BenchSettings, views: int) -> list[BenchRun]:
    """Every run the settings ask for, from the registry: a schedule fixed to one process or one
    micro-batch runs once per fixed shape (one process: once per micro-batch count, to
    calibrate the profiled costs, and once more on every process at once), the others at every
    micro-batch count; shapes a schedule refuses are skipped with a message."""
    names = settings.schedules or tuple(s.name for s in schedules())
    out = []
    for name in names:
        spec = get_schedule(name)
        procs = spec.stages or settings.stages
        micros = [spec.microbatches] if spec.microbatches else list(settings.microbatches)
        for micro in micros:
            try:
                spec.check(procs, micro, None, views)
            except ValueError as err:
                progress(f"skipping {name} at N={procs}, M={micro}: {err}")
                continue
            out.append(BenchRun(name, procs, micro))
            if spec.stages == 1 and settings.stages > 1:
                out.append(BenchRun(name, settings.stages, micro, busy=True))
    return out


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def run_pipeline(
    config: Config, run: BenchRun, balances: tuple[list[int], list[int]] | None
) -> PipelineConfig:
    """The pipeline part of one run: the preset's, reshaped (backward pieces only for the
    schedules that pipeline micro-batches; the profiled partition for pipelined runs; a busy
    run is the one-process schedule on each process)."""
    spec = get_schedule(run.schedule)
    pieces = config.pipeline.backward_pieces if spec.stages is None and spec.microbatches is None else None
    return replace(
        config.pipeline,
        schedule=run.schedule,
        stages=1 if run.busy else run.procs,
        microbatches=run.microbatches,
        backward_pieces=pieces if spec.splits_backward else None,
        balance=tuple(balances[0]) if balances and run.pipelined else None,
        teacher_balance=tuple(balances[1]) if balances and run.pipelined else None,
        record_timeline=True,
    )


def launch_group(spec_file: Path, procs: int, threads: int, bar: tqdm) -> None:
    """Run one group of timed runs on ``procs`` processes, advancing ``bar`` as rank 0 reports.

    Raises:
        RuntimeError: if the group fails (the end of its output is shown).
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core.launch",
            "--nproc",
            str(procs),
            "experiments.bench",
            "worker",
            str(spec_file),
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=80)
    for line in proc.stderr:
        if line.startswith(PROGRESS):
            bar.update(1)
            bar.set_postfix_str(line[len(PROGRESS) :].strip())
        else:
            tail.append(line)
    if proc.wait() != 0:
        raise RuntimeError(
            f"runs on {procs} process(es) failed (exit {proc.returncode}):\n{''.join(tail)[-6000:]}"
        )


def run_benchmark(settings: BenchSettings) -> list[dict]:
    """Profile, run every schedule, and write rows and timelines under ``settings.out``.

    Returns:
        The rows written.

    Raises:
        SettingsError: if a micro-batch count exceeds the mini-batch or the stages the blocks.
        RuntimeError: if a group of runs fails (its output is shown).
    """
    spec = get_method(settings.method)
    config = settings.config()
    out = Path(settings.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    threads = max(config.run.threads, 1)
    torch.set_num_threads(threads)
    device = torch.device(config.run.device)
    work = spec.setup(config)
    check_fits(settings, work.samples_per_step)
    first = next(iter(work.batches(0, 1)))
    plan = plan_runs(settings, work.task.views)
    profiles: dict[int, BlockCosts] = {}
    for run in plan:
        m = run.unit_microbatches
        if m not in profiles:
            progress(f"profiling blocks at {work.samples_per_step // m} samples per unit")
            profiles[m] = profile_blocks(
                work.task, first, m, work.optimizer, device, amp_bf16=config.pipeline.amp_bf16
            )
    biggest = profiles[max(profiles)]
    try:
        partition = plan_partition(
            settings.stages,
            [f + b for f, b in zip(biggest.student_fwd, biggest.student_bwd)],
            biggest.teacher_fwd,
            work.task.teacher_rule.kind,
            student_extra=work.task.predictor_blocks,
        )
    except ValueError as err:  # more stages than blocks
        raise SettingsError(str(err)) from err
    balances = (list(partition.student), list(partition.teacher))
    waiting: dict[int, list[tuple[float, float]]] = {}
    for run in plan:
        m = run.unit_microbatches
        if run.pipelined and get_schedule(run.schedule).split_backward and m not in waiting:
            progress(f"timing split backwards with weight halves waiting, {m} micro-batch(es)")
            waiting[m] = deferral_factors(work.task, first, m, balances[0], device)
    splits: dict[int, list[tuple[float, float, float]]] = {}
    for run in plan:
        m = run.unit_microbatches
        if run.pipelined and run.procs == settings.stages and m not in splits:
            progress(f"timing each stage whole, {m} micro-batch(es)")
            splits[m] = stage_times(work.task, first, m, balances[0], balances[1], device)
    # the size the traffic probe measures at: the student's message at the first cut, at the
    # unit the wake probe's piece of work runs (the largest micro-batch count)
    cut_costs = profiles.get(max(settings.microbatches)) or profiles[max(profiles)]
    message_bytes = int(max(cut_costs.student_bytes[balances[0][0] - 1], 4.0))
    groups: dict[int, list[BenchRun]] = {}
    for run in plan:
        groups.setdefault(run.procs, []).append(run)
    results: dict[BenchRun, dict] = {}
    speeds: dict[BenchRun, list[float | None]] = {}  # the machine's speed at each run, per round
    total = len(plan) * settings.rounds
    progress(
        f"{len(plan)} runs x {settings.rounds} rounds of {settings.warmup} warm-up + {settings.steps} timed steps"
    )
    with tqdm(total=total, desc=f"bench {spec.name}", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for procs, runs in groups.items():
            spec_file = out / "runs" / f"N{procs}.spec.json"
            spec_file.write_text(
                json.dumps(
                    {
                        "settings": asdict(settings),
                        "config": to_dict(config),
                        "runs": [
                            {
                                "name": r.name,
                                "busy": r.busy,
                                "pipeline": to_dict(run_pipeline(config, r, balances)),
                            }
                            for r in runs
                        ],
                        "folder": str(out / "runs"),
                        "message_bytes": message_bytes,
                    }
                )
            )
            launch_group(spec_file, procs, threads, bar)
            probes = []
            for run in runs:
                rounds = [
                    json.loads((out / "runs" / f"{run.name}.r{r}.json").read_text())
                    for r in range(settings.rounds)
                ]
                tail = partial_steps(run.schedule, run.procs, work.task.teacher_rule.kind)
                results[run] = combine_rounds(rounds, settings.warmup, tail)
                probes.append([r.get("speed_ms") for r in rounds])
            speeds.update(zip(runs, run_speeds(probes)))
    for run, result in results.items():
        batch = work.samples_per_step
        progress(
            f"{run.name}: {batch / result['median_step_s']:.1f} samples/s (rounds: "
            + ", ".join(f"{batch / s:.0f}" for s in result["round_steps_s"])
            + ")"
        )
    fits = calibration_fits(work, results, profiles, settings)
    # each round's own calibration: a round's prediction is paired with the same round's
    # measurement, so a drift of the machine between rounds hits both alike
    by_round = [
        calibration_fits(work, one_round(results, k), profiles, settings) for k in range(settings.rounds)
    ]
    rows = [
        _row(
            settings,
            spec,
            config,
            work,
            run,
            result,
            staged(run_costs(profiles, fits, run), run, balances, splits),
            [staged(run_costs(profiles, f, run), run, balances, splits) for f in by_round],
            profiles,
            out,
            waiting.get(run.unit_microbatches),
            speed_factors(speeds.get(calibration_run(run, fits, results)), speeds.get(run)),
        )
        for run, result in results.items()
        if not run.busy
    ]
    write_rows(out / "rows.jsonl", rows)
    (out / "costs.json").write_text(
        json.dumps(
            {
                "step_fits": {
                    kind: {str(m): f.to_dict() for m, f in by_m.items()} for kind, by_m in fits.items()
                },
                **{str(m): c.to_dict() for m, c in profiles.items()},
                "waiting": {str(m): w for m, w in waiting.items()},
                "stage_times": {str(m): t for m, t in splits.items()},
            },
            indent=1,
        )
    )
    return rows


def combine_rounds(rounds: list[dict], warmup: int, tail: int = 1) -> dict:
    """One result from several rounds of a run: the median of the rounds' steady-state medians
    (without the last ``tail`` steps, :func:`core.bench.partial_steps`), every steady step, and
    the last round's timeline."""
    steps = [steady_steps(r["step_end_s"], warmup, tail) for r in rounds]
    medians = [statistics.median(x) for x in steps]
    return {
        **rounds[-1],
        "median_step_s": statistics.median(medians),
        "round_steps_s": medians,
        "steady_steps_s": [x for per_round in steps for x in per_round],
        "round_records": [r["records"] for r in rounds],
    }


def one_round(results: dict[BenchRun, dict], k: int) -> dict[BenchRun, dict]:
    """The results of round ``k`` alone (its step ends and timeline), for a round's calibration."""
    return {run: {**result, "round_records": [result["round_records"][k]]} for run, result in results.items()}


def calibration_fits(
    work: Setup, results: dict[BenchRun, dict], profiles: dict[int, BlockCosts], settings: BenchSettings
) -> dict[str, dict[int, StepFit]]:
    """The one-process step's timeline at each M against the profile at its unit size
    (:func:`core.step_fit.fit_step`), measured alone (``alone``) and with every process
    running it at once (``busy``): how each kind of work runs inside a training step, and with
    every core busy, rather than timed block by block."""
    fits: dict[str, dict[int, StepFit]] = {"alone": {}, "busy": {}}
    batch = work.samples_per_step
    last = settings.warmup + settings.steps - 2
    pending = []
    for run, result in results.items():
        if get_schedule(run.schedule).stages == 1:
            rounds = [
                one
                for records in result["round_records"]
                for one in processes([TimelineRecord(**r) for r in records])
            ]
            pending.append((run, rounds, fitted_costs(list(profiles.values()), batch // run.microbatches)))
    unfit = []
    for run, rounds, costs in pending:
        try:
            fits["busy" if run.busy else "alone"][run.microbatches] = fit_step(
                rounds, costs, settings.warmup, last
            )
        except ValueError:  # one unit per mini-batch: the input cost comes from the others
            unfit.append((run, rounds, costs))
    for run, rounds, costs in unfit:
        kind = "busy" if run.busy else "alone"
        known = [f.input_ms for f in fits[kind].values()] or [
            f.input_ms for by in fits.values() for f in by.values()
        ]
        input_ms = statistics.median(known) if known else 0.0
        fits[kind][run.microbatches] = fit_step(rounds, costs, settings.warmup, last, input_ms)
    return fits


def fit_key(run: BenchRun, fits: dict[str, dict[int, StepFit]]) -> tuple[str, int] | None:
    """Which step fit calibrates ``run``: the kind (measured alone for one process, busy for
    several, alone where no busy fit was made) and the micro-batch count of the one-process run
    nearest in unit size; None without any fit."""
    kind = "alone" if run.procs == 1 or not fits["busy"] else "busy"
    by_m = fits[kind]
    if not by_m:
        return None
    return kind, min(by_m, key=lambda s: abs(s - run.unit_microbatches))


def calibration_run(
    run: BenchRun, fits: dict[str, dict[int, StepFit]], results: dict[BenchRun, dict]
) -> BenchRun | None:
    """The busy one-process run whose step fit calibrates ``run``'s prediction
    (:func:`fit_key`); None where the run is predicted from a fit of runs alone or from none."""
    key = fit_key(run, fits)
    if key is None or key[0] != "busy":
        return None
    return next(
        (r for r in results if r.busy and r.procs == run.procs and r.microbatches == key[1]),
        None,
    )


def run_costs(
    profiles: dict[int, BlockCosts], fits: dict[str, dict[int, StepFit]], run: BenchRun
) -> BlockCosts:
    """The run's per-block costs: the fit at its unit size, with the step fit :func:`fit_key`
    picks (the profile alone without one)."""
    base = fitted_costs(list(profiles.values()), profiles[run.unit_microbatches].samples)
    key = fit_key(run, fits)
    return base if key is None else apply_fit(base, fits[key[0]][key[1]])


def staged(
    costs: BlockCosts,
    run: BenchRun,
    balances: tuple[list[int], list[int]],
    splits: dict[int, list[tuple[float, float, float]]],
) -> BlockCosts:
    """A pipelined run's costs with each kind of work split over its stages as the stages timed
    whole at its unit size say (:func:`core.stage_timing.split_by_stage`); the others' as
    they are."""
    times = splits.get(run.unit_microbatches) if run.pipelined else None
    if not times or len(times) != run.procs:
        return costs
    return split_by_stage(costs, balances[0], balances[1], times)


def teacher_share(costs: BlockCosts) -> float:
    """Share of a mini-batch's compute that is teacher forward (what tspipe can hide)."""
    teacher = sum(costs.teacher_fwd)
    return teacher / (teacher + sum(costs.student_fwd) + sum(costs.student_bwd))


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def timing_fields(result: dict, batch: int, settings: BenchSettings) -> dict:
    """A row's measured speed from a run's combined rounds: samples/s (the median of the
    rounds' medians), the rounds' range, the quartiles of every steady step, and the timing
    settings that produced them."""
    step_s = result["median_step_s"]
    rounds = [batch / x for x in result["round_steps_s"]]
    q1_step, q3_step = _quantiles(result["steady_steps_s"])
    return dict(
        samples_per_s=batch / step_s,
        step_ms=step_s * 1e3,
        samples_per_s_min=min(rounds),
        samples_per_s_max=max(rounds),
        samples_per_s_q1=batch / q3_step,
        samples_per_s_q3=batch / q1_step,
        round_samples_per_s=rounds,
        rounds=settings.rounds,
        steady_steps=len(result["steady_steps_s"]),
        warmup_steps=settings.warmup,
        timed_steps=settings.steps,
    )


def _row(
    settings: BenchSettings,
    spec: MethodSpec,
    config: Config,
    work: Setup,
    run: BenchRun,
    result: dict,
    unit_costs: BlockCosts,
    round_costs: list[BlockCosts],
    profiles: dict[int, BlockCosts],
    out: Path,
    waiting: list[tuple[float, float]] | None = None,
    factors: list[float] | None = None,
) -> dict:
    """One row: the run's measured speed beside the simulator's, predicted once per round from
    that round's calibration (``round_costs``) and compared with that round's measurement; the
    row's prediction and error are the medians over the rounds, its simulated timeline the last
    round's (beside the measured timeline, also the last round's). ``factors``: per round, the
    machine's speed at the calibration over its speed at the run (:mod:`experiments.drift`);
    with them the row also carries the prediction and error at the speed the run met."""
    schedule = get_schedule(run.schedule)
    batch, views = work.samples_per_step, work.task.views
    step_s = result["median_step_s"]
    samples = batch / step_s
    if schedule.runner == "ddp":  # one replica's work on its share, times the replicas
        bound = bound_samples_per_s(unit_costs, views, batch // run.procs, 1) * run.procs
    else:
        bound = bound_samples_per_s(unit_costs, run.microbatches * views, batch, run.procs)
    link = Link(**result["extra"]["link"]) if "link" in result["extra"] else DEFAULT_LINK
    pipeline = PipelineConfig(
        schedule=run.schedule,
        stages=run.procs,
        microbatches=run.microbatches,
        backward_pieces=result["extra"].get("backward_pieces"),
        max_grad_norm=config.pipeline.max_grad_norm,
        nan_guard=config.pipeline.nan_guard,
    )
    balance = result["extra"].get("balance") or [len(unit_costs.student_fwd)]
    teacher_balance = result["extra"].get("teacher_balance") or [len(unit_costs.teacher_fwd)]
    predicted, error, sim_records, per_round = None, None, [], []
    at_speed: list[float] = []
    at_speed_error = None
    if schedule.runner == "ddp" or run.procs == len(balance):
        for costs in round_costs:
            speed, sim_records = predict(
                run.schedule,
                costs,
                pipeline,
                views,
                work.task.teacher_rule.kind,
                batch,
                balance,
                teacher_balance,
                link,
                waiting if run.pipelined and run.procs == len(waiting or []) else None,
            )
            per_round.append(speed)
        if per_round and None not in per_round:
            measured = [batch / s for s in result["round_steps_s"]]
            predicted = statistics.median(per_round)
            error = statistics.median(p / m for p, m in zip(per_round, measured)) - 1.0
            if factors is not None and len(factors) == len(per_round):
                at_speed = [p * f for p, f in zip(per_round, factors)]
                at_speed_error = statistics.median(p / m for p, m in zip(at_speed, measured)) - 1.0
        else:
            per_round = []
    records = [TimelineRecord(**r) for r in result["records"]]
    bubble = None
    if schedule.is_pipeline:
        try:
            _, bubble = steady_state(
                records, run.procs, settings.warmup, settings.warmup + settings.steps - 2
            )
        except ValueError:
            bubble = None
    if schedule.gantt:
        write_rows(out / "timelines" / f"{run.name}.measured.jsonl", result["records"])
        if sim_records:
            write_rows(
                out / "timelines" / f"{run.name}.simulated.jsonl",
                [r for r in sim_records if not r["op"].startswith(("SEND", "RECV"))],
            )
    threads = max(config.run.threads, 1)
    device = f"{config.run.device} ({threads} thread{'s' if threads > 1 else ''}/process)"
    if config.run.device == "cuda":
        device = torch.cuda.get_device_name(0)
    return make_row(
        method=spec.name,
        method_title=spec.title,
        command=settings.command or f"python -m experiments.bench {spec.name}",
        schedule=run.schedule,
        model=work.model,
        stages=run.procs,
        microbatches=run.microbatches,
        global_batch=batch,
        device=device,
        **timing_fields(result, batch, settings),
        efficiency=samples / bound,
        bound_samples_per_s=bound,
        bubble_fraction=bubble,
        peak_mem_gib=result["peak_gib"],
        seed=config.run.seed,
        simulated=False,
        predicted_samples_per_s=predicted,
        prediction_error=error,
        round_predicted_samples_per_s=per_round or None,
        round_speed_factors=factors if at_speed else None,
        predicted_at_speed_samples_per_s=statistics.median(at_speed) if at_speed else None,
        prediction_error_at_speed=at_speed_error,
        backward_pieces=pipeline.pieces,
        balance=result["extra"].get("balance"),
        teacher_balance=result["extra"].get("teacher_balance"),
        link_gbps=link.gbps if "link" in result["extra"] else None,
        link_latency_us=link.latency_us if "link" in result["extra"] else None,
        link_overhead_us=link.overhead_us if "link" in result["extra"] else None,
        link_cpu_gbps=link.cpu_gbps if "link" in result["extra"] else None,
        link_wake_ms=link.wake_ms if "link" in result["extra"] else None,
        link_wake_tau_ms=link.wake_tau_ms if "link" in result["extra"] else None,
        link_beside_gbps=link.beside_gbps if "link" in result["extra"] else None,
        synthetic_inputs=work.synthetic_data,
        amp_bf16=config.pipeline.amp_bf16,
        teacher_fwd_share=teacher_share(profiles[run.unit_microbatches]),
        preset=settings.preset,
    )


def teacher_pass(work: Setup, microbatches: Sequence[int]) -> Callable[[], object]:
    """The whole teacher's forward on one unit at the largest micro-batch count the runs use:
    the piece of work the wake probe times after each idle and the traffic probe beside messages
    (a typical action's size)."""
    teacher = nn.Sequential(*prepare_models(work.task)[1])
    views = work.task.split_inputs(next(iter(work.batches(0, 1))), 0)[1]
    unit = scatter(views[0], max(microbatches))[0]

    @torch.no_grad()
    def run() -> object:
        return teacher(unit)

    return run


def worker(spec_file: Path) -> None:
    """One rank of a group of timed runs (started by ``core.launch``): every run, in rounds;
    rank 0 reports each finished run on stderr for the driver's progress bar."""
    import torch.distributed as dist

    from core.launch import init_distributed
    from core.runtime import Solo, make_runner
    from core.runtime.pipeline import network

    group = json.loads(spec_file.read_text())
    settings = from_dict(BenchSettings, group["settings"])
    method = get_method(settings.method)
    config = from_dict(Config, group["config"], {"method": method.config_cls})
    torch.set_num_threads(max(config.run.threads, 1))
    rank = init_distributed(config.run.device, transport=config.pipeline.transport)
    link: dict[str, float | None] = {}
    probe: Callable[[], object] | None = None  # the machine-speed probe around each run
    setups: dict[str, Setup] = {}  # a method's setup may depend on the runner kind, not on the shape
    if rank.world > 1:
        messages = network(config.pipeline, rank.device)  # the runs' own message path
        measured = probe_link(transport=messages)
        kind = get_schedule(config.pipeline.schedule).runner
        setups[kind] = method.setup(config)  # the probes' piece of work, then the runs of its kind
        piece = teacher_pass(setups[kind], settings.microbatches)
        size = group.get("message_bytes")  # groups that predict nothing (bench_hybrid) give none
        per_byte = probe_traffic(messages, piece, size) if size else 0.0
        messages.close()
        wake_ms, wake_tau_ms = probe_wake(piece)
        probe = piece if size else None  # only groups whose runs are predicted
        link = {
            "gbps": measured.gbps,
            "latency_us": measured.latency_us,
            "overhead_us": measured.overhead_us,
            "cpu_gbps": measured.cpu_gbps,
            "wake_ms": wake_ms,
            "wake_tau_ms": wake_tau_ms,
            "beside_gbps": 1e-6 / per_byte if per_byte > 0 else None,  # ms per byte -> GB/s
        }
    total = settings.warmup + settings.steps
    for r in range(settings.rounds):
        for run in group["runs"]:
            pipeline = from_dict(PipelineConfig, run["pipeline"])
            kind = get_schedule(pipeline.schedule).runner
            if kind not in setups:
                setups[kind] = method.setup(replace(config, pipeline=pipeline))
            work = setups[kind]
            transport = Solo() if run["busy"] else None  # every rank alone, all at once
            runner = make_runner(work.task, pipeline, rank.device, work.optimizer, work.scheduler, transport)
            extra: dict[str, Any] = {"backward_pieces": pipeline.backward_pieces}
            if link:
                extra["link"] = link
            if runner.balance is not None and not run["busy"]:  # pipelines; ddp holds whole models
                extra["balance"], extra["teacher_balance"] = (
                    list(runner.balance),
                    list(runner.teacher_balance),
                )
            speeds = []
            if probe is not None:
                dist.barrier()
                speeds.append(probe_ms(probe))
            if rank.world > 1:
                dist.barrier()  # every rank starts together (a busy run has no barrier of its own)
            result = timed_run(runner, work.batches(0, total), total, extra)
            if probe is not None:  # kept with the run: the machine's speed just before and after
                dist.barrier()
                speeds.append(probe_ms(probe))
                if result is not None:
                    result["speed_ms"] = speeds
            if result is not None:  # rank 0
                (Path(group["folder"]) / f"{run['name']}.r{r}.json").write_text(json.dumps(result))
            runner.close()
            del runner
            gc.collect()  # what the last run left in reference cycles goes now, not inside a timed run
            if rank.rank == 0:
                print(f"{PROGRESS}{run['name']} round {r + 1}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # the driver's profiles and every worker's runs: no page faults per step
    if argv[:1] == ["worker"]:
        worker(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method")
    parser.add_argument("--preset", default=None, help="default: the method's benchmark preset for --device")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="picks the default preset")
    parser.add_argument(
        "--stages", "--nproc", dest="stages", type=int, default=2, help="pipeline stages (processes)"
    )
    parser.add_argument("--microbatches", type=int, nargs="+", default=None, help="default: 1 2 4 (cuda: N)")
    parser.add_argument("--schedules", nargs="+", default=(), help="schedules and runners (default: all)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--steps",
        type=int,
        default=6,
        help="timed steps after the warm-up (at least 4: the last is not counted)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="default: results/METHOD (results/METHOD-cuda on GPUs)")
    parser.add_argument("--command", default="", help="the make target to name in rows")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = parser.parse_args(argv)
    try:
        spec = get_method(args.method)
        preset = args.preset or spec.bench_presets.get(args.device) or spec.default_preset
        settings = BenchSettings(
            method=spec.name,
            preset=preset,
            overrides=tuple(args.overrides),
            stages=args.stages,
            microbatches=tuple(args.microbatches or ((args.stages,) if args.device == "cuda" else (1, 2, 4))),
            schedules=tuple(args.schedules),
            warmup=args.warmup,
            steps=args.steps,
            rounds=args.rounds,
            out=args.out or f"results/{spec.name}{'' if args.device == 'cpu' else '-cuda'}",
            command=args.command
            or (spec.bench_command if args.device == "cpu" and args.preset is None else ""),
        )
        for name in settings.schedules:
            get_schedule(name)
        config = settings.config()
        spec.check(config)  # data and teacher present (a corpus is tokenised once, here)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        rows = run_benchmark(settings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress(f"{len(rows)} rows in {Path(settings.out) / 'rows.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
