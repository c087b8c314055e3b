"""The training entry every method shares: config, launch, run folder, logging, evaluation.

A method module provides a :class:`Method` (its config class, presets, a data check and a
``setup``); ``python -m methods.<name>.train`` calls :func:`main`. The same entry runs every
schedule and runner (``--schedule``), locally (it relaunches itself through ``core.launch`` with
one process per stage) or under ``torchrun`` (it joins the job from the environment).

Each run gets a folder: ``config.json`` (resolved), ``log.jsonl`` (losses, from the rank that
computes them), ``eval.jsonl`` (evaluations, rank 0), TensorBoard events under ``tb/``,
checkpoints under ``checkpoints/`` and the result row ``row.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.config import RUNNERS, PipelineConfig
from core.launch import in_launched_job, init_distributed, launch
from core.metrics import make_row
from core.schedule import SCHEDULES
from core.task import Task
from methods.common.config import ConfigError, build_config, to_json
from methods.common.data import DataNotFound

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrainConfig:
    """Fields every method's config has (methods subclass this dataclass).

    Attributes:
        schedule: pipeline schedule or runner (``sequential``, ``mp``, ``gpipe``, ``1f1b``,
            ``tspipe``, ``ddp``, ``torch-gpipe``, ``torch-1f1b``).
        stages: processes (pipeline stages, or ddp replicas).
        microbatches: micro-batches per mini-batch.
        backward_pieces: split of each student backward; None: the schedule's default.
        balance: student blocks per stage, comma-separated; empty: uniform.
        device: ``cpu`` or ``cuda``.
        amp_bf16: bf16 autocast.
        max_grad_norm: global gradient clipping; None: off.
        threads: torch threads per process (0: torch's default).
        seed: seed of weights, data order and augmentation.
        epochs: passes over the training data (ignored when ``steps`` > 0).
        steps: optimizer steps; 0: ``epochs`` worth.
        eval_every: evaluate every this many epochs (0: only at the end).
        checkpoint_every: save a checkpoint every this many steps (0: only at the end).
        log_every: write a loss line every this many steps.
        run_dir: run folder; empty: ``runs/<method>/<time>-<schedule>-N<stages>-M<micro>-s<seed>``.
        dtype: ``float32``, or ``float64`` for exactness checks against a reference.
    """

    schedule: str = "sequential"
    stages: int = 1
    microbatches: int = 1
    backward_pieces: int | None = None
    balance: str = ""
    device: str = "cpu"
    amp_bf16: bool = False
    max_grad_norm: float | None = None
    threads: int = 0
    seed: int = 0
    epochs: int = 1
    steps: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    run_dir: str = ""
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        for name in ("epochs", "steps", "eval_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        self.pipeline()  # validates schedule, stages, micro-batches, balance

    def pipeline(self) -> PipelineConfig:
        """The pipeline part of the run."""
        balance = tuple(int(x) for x in self.balance.split(",")) if self.balance else None
        return PipelineConfig(
            schedule=self.schedule,
            stages=self.stages,
            microbatches=self.microbatches,
            backward_pieces=self.backward_pieces,
            balance=balance,
            amp_bf16=self.amp_bf16,
            max_grad_norm=self.max_grad_norm,
        )


@dataclass
class Setup:
    """What a method builds for one run.

    Attributes:
        task: the task.
        batches: ``batches(start, steps)`` yields the data batches of those steps.
        optimizer: optimizer factory from named parameters.
        scheduler: learning-rate scheduler factory, or None.
        steps: total optimizer steps.
        steps_per_epoch: steps in one pass over the data.
        samples_per_step: samples per mini-batch.
        model: model name for rows.
        evaluate: merged ``{"student": state, "teacher": state}`` -> metrics (rank 0 only).
        metric: the metric a result row reports.
    """

    task: Task
    batches: Callable[[int, int], Iterable[Any]]
    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None
    steps: int
    steps_per_epoch: int
    samples_per_step: int
    model: str
    evaluate: Callable[[dict[str, dict[str, torch.Tensor]]], dict[str, float]] | None = None
    metric: str | None = None


@dataclass
class Method:
    """A method as the trainer sees it.

    Attributes:
        name: package name under ``methods`` (``byol``, ...).
        config_cls: its config dataclass (a :class:`TrainConfig`).
        presets: named presets (from ``experiments``).
        default_preset: preset used without ``--preset``.
        check: raises (ConfigError, DataNotFound) when a config cannot run here; called
            before any process starts.
        setup: builds the run.
    """

    name: str
    config_cls: type
    presets: dict[str, dict]
    default_preset: str
    check: Callable[[Any], None]
    setup: Callable[[Any], Setup]


def parse_args(method: Method, argv: Sequence[str]) -> tuple[argparse.Namespace, Any]:
    """Parse the command line into ``(args, config)``.

    Raises:
        ConfigError: for anything wrong with the config.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m methods.{method.name}.train",
        description=f"Train {method.name} with any schedule: " + ", ".join([*SCHEDULES, *RUNNERS]),
    )
    parser.add_argument(
        "--preset", default=method.default_preset, help=f"one of: {', '.join(method.presets)}"
    )
    parser.add_argument("--schedule")
    parser.add_argument("--stages", type=int)
    parser.add_argument("--microbatches", type=int)
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--run-dir", dest="run_dir")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(list(argv))
    if args.preset not in method.presets:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of: {', '.join(method.presets)}")
    flags = {k: getattr(args, k) for k in ("schedule", "stages", "microbatches", "device", "run_dir")}
    preset = {**method.presets[args.preset], **{k: v for k, v in flags.items() if v is not None}}
    return args, build_config(method.config_cls, preset, args.overrides)


def default_run_dir(method: str, config: TrainConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (
        ROOT
        / "runs"
        / method
        / f"{stamp}-{config.schedule}-N{config.stages}-M{config.microbatches}-s{config.seed}"
    )


def main(method: Method, argv: Sequence[str] | None = None) -> int:
    """Command-line entry: validate, then run here or relaunch with one process per stage.

    Returns:
        The exit status: 0 on success, 2 for a bad config or missing data (one line on stderr),
        otherwise the failing rank's status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _, config = parse_args(method, argv)
        method.check(config)
        if config.device == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device=cuda but CUDA is not available; use --device cpu")
            if not in_launched_job() and config.stages > torch.cuda.device_count():
                raise ConfigError(
                    f"{config.stages} processes but {torch.cuda.device_count()} GPUs: NCCL refuses two ranks "
                    "on one GPU; use at most one stage per GPU"
                )
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.stages > 1 and not in_launched_job():
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(method.name, config)
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = [a for a in argv if not a.startswith("run_dir=")] + [f"run_dir={run_dir}"]
        return launch(config.stages, [f"methods.{method.name}.train", *argv])
    run(method, config)
    return 0


def _agree_run_dir(method: str, config: TrainConfig) -> Path:
    """Every rank uses rank 0's run folder (torchrun starts ranks without one)."""
    path = [str(Path(config.run_dir) if config.run_dir else default_run_dir(method, config))]
    if dist.is_initialized():
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


class _Logger:
    """Loss lines (JSONL, TensorBoard, a tqdm bar) on the rank that computes the loss."""

    def __init__(self, run_dir: Path, total: int, active: bool, log_every: int) -> None:
        self.active, self.log_every = active, log_every
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.file = (run_dir / "log.jsonl").open("a")
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(total=total, desc=run_dir.name, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.start = time.perf_counter()

    def step(self, step: int, losses: dict[str, float] | None, lr: float) -> None:
        if not self.active or losses is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['loss']:.4f}")
        if step % self.log_every == 0:
            line = {"step": step, "lr": lr, "time_s": time.perf_counter() - self.start, **losses}
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
            for key, value in losses.items():
                self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.add_scalar("train/lr", lr, step)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.file.close()
            self.tb.close()


def _save_checkpoint(run_dir: Path, runner: Any, step: int, config: TrainConfig) -> Path:
    folder = run_dir / "checkpoints" / f"step{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {
        "stage": runner.stage_state(),
        "optimizer": runner.optimizer.state_dict(),
        "scheduler": runner.scheduler.state_dict() if runner.scheduler is not None else None,
        "step": step,
        "config": dataclasses.asdict(config),
    }
    tmp = folder / f"rank{rank}.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / f"rank{rank}.pt")
    return folder


def run(method: Method, config: TrainConfig) -> dict | None:
    """One rank of a training run.

    Returns:
        On rank 0 the result row (also written to ``row.json``); None elsewhere.
    """
    from core.engine import make_runner
    from core.runtime import gather_state

    rank = init_distributed(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_default_dtype(getattr(torch, config.dtype))
    run_dir = _agree_run_dir(method.name, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank.rank == 0:
        (run_dir / "config.json").write_text(to_json(config))
    setup = method.setup(config)
    pipeline = config.pipeline()
    runner = make_runner(setup.task, pipeline, rank.device, setup.optimizer, setup.scheduler)
    loss_rank = 0 if config.schedule == "ddp" else rank.world - 1
    logger = _Logger(run_dir, setup.steps, rank.rank == loss_rank, config.log_every)
    evals: list[dict] = []
    eval_file = run_dir / "eval.jsonl"
    steps = setup.steps
    epoch_steps = setup.steps_per_epoch

    def evaluate(step: int) -> None:
        state = gather_state(runner.stage_state())
        if rank.rank == 0 and setup.evaluate is not None:
            started = time.perf_counter()
            metrics = setup.evaluate(state)
            line = {
                "step": step,
                "epoch": step / epoch_steps,
                "eval_s": time.perf_counter() - started,
                **metrics,
            }
            evals.append(line)
            with eval_file.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            if logger.active:
                for key, value in metrics.items():
                    logger.tb.add_scalar(f"eval/{key}", value, step)

    def on_step(b: int, losses: dict[str, float] | None) -> None:
        done = b + 1
        lr = runner.optimizer.param_groups[0]["lr"]
        logger.step(b, losses, lr)
        if config.eval_every and done % (config.eval_every * epoch_steps) == 0 and done < steps:
            evaluate(done)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < steps:
            _save_checkpoint(run_dir, runner, done, config)

    log = runner.run(setup.batches(0, steps), steps, on_step)
    logger.close()
    evaluate(steps)
    _save_checkpoint(run_dir, runner, steps, config)
    runner.close()
    if rank.rank != 0:
        if dist.is_initialized():
            dist.destroy_process_group()
        return None
    durations = [b - a for a, b in zip(log.step_end_s, log.step_end_s[1:])]
    step_s = statistics.median(durations[min(2, len(durations) - 1) :]) if durations else float("nan")
    final = evals[-1] if evals else {}
    row = make_row(
        method=method.name,
        schedule=config.schedule,
        model=setup.model,
        stages=config.stages,
        microbatches=config.microbatches,
        global_batch=setup.samples_per_step,
        device=torch.cuda.get_device_name(rank.device) if rank.device.type == "cuda" else "cpu",
        samples_per_s=setup.samples_per_step / step_s if durations else None,
        step_ms=step_s * 1e3 if durations else None,
        metric=setup.metric,
        metric_value=final.get(setup.metric) if setup.metric else None,
        seed=config.seed,
        simulated=False,
        steps=steps,
        epochs=steps / epoch_steps,
        run_dir=str(run_dir),
        evals=evals,
        final_loss=(log.losses[-1]["loss"] if log.losses else None),
        backward_pieces=pipeline.pieces,
    )
    (run_dir / "row.json").write_text(json.dumps(row, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return row
