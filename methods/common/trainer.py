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
import logging
import os
import shutil
import signal
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
log = logging.getLogger(__name__)


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
        resume: ``auto`` continues from the run folder's latest complete checkpoint (a fresh
            start when there is none); a checkpoint folder continues from that one; empty: start.
        timeout_s: longest wait for a message or collective before the run is declared stuck
            (evaluation pauses on rank 0 do not count).
        nan_guard: non-finite loss or gradient: ``stop`` at that step, ``skip`` the step, ``off``.
        min_free_gb: refuse to start with less free disk space in the run folder.
        inject_fault: test aid: ``kill:STEP:RANK``, ``hang:STEP:RANK`` or ``nan:STEP``.
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
    resume: str = ""
    timeout_s: float = 45.0
    nan_guard: str = "stop"
    min_free_gb: float = 0.25
    inject_fault: str = ""

    def __post_init__(self) -> None:
        if self.inject_fault and self.inject_fault.split(":")[0] not in ("kill", "hang", "nan"):
            raise ValueError(
                f"inject_fault must be kill:STEP:RANK, hang:STEP:RANK or nan:STEP, got {self.inject_fault!r}"
            )
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
            timeout_s=self.timeout_s,
            nan_guard=self.nan_guard,
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
        make_task: builds just the task (cheap), so block counts can be checked before any
            process starts; None skips that check.
    """

    name: str
    config_cls: type
    presets: dict[str, dict]
    default_preset: str
    check: Callable[[Any], None]
    setup: Callable[[Any], Setup]
    make_task: Callable[[Any], Task] | None = None


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
    args = parser.parse_intermixed_args(list(argv))
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
        if method.make_task is not None:
            check_blocks(method.make_task(config), config)
        if not in_launched_job():
            run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(method.name, config)
            check_output(run_dir, config.min_free_gb)
            check_resume(run_dir, method.name, config)
            config = dataclasses.replace(config, run_dir=str(run_dir))
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if config.stages > 1 and not in_launched_job():
        argv = [a for a in argv if not a.startswith("run_dir=")] + [f"run_dir={config.run_dir}"]
        return launch(config.stages, [_entry_module(method), *argv])
    run(method, config)
    return 0


def _entry_module(method: Method) -> str:
    """The module this command was started as (``python -m X``), to start the ranks the same way."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else f"methods.{method.name}.train"


def check_blocks(task: Task, config: TrainConfig) -> None:
    """Stages and balances must fit the task's blocks (raises ValueError saying what to change)."""
    from core.runtime import resolve_balances

    student = task.build_student()
    teacher = task.build_teacher(student)
    resolve_balances(config.pipeline(), task, len(student), len(teacher))


def check_resume(run_dir: Path, method: str, config: TrainConfig) -> None:
    """With ``resume`` set, the checkpoint must come from the same setup.

    Raises:
        ConfigError: for a missing explicit checkpoint or a mismatched one.
    """
    from core import checkpoint

    if not config.resume:
        return
    if config.resume == "auto":
        folder = checkpoint.latest(run_dir)
        if folder is None:
            return  # nothing to resume: a fresh start
    else:
        folder = Path(config.resume)
        if not checkpoint.complete(folder):
            raise ConfigError(
                f"resume={config.resume}: not a complete checkpoint folder (manifest and rank files)"
            )
    pipeline = config.pipeline()
    expected = {
        "method": method,
        "schedule": config.schedule,
        "world_size": config.stages,
        "microbatches": config.microbatches,
        "backward_pieces": pipeline.pieces,
    }
    try:
        checkpoint.check_manifest(checkpoint.read_manifest(folder), expected)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_output(run_dir: Path, min_free_gb: float) -> None:
    """Make sure the run folder can be created and written and has room, before anything runs.

    Raises:
        ConfigError: naming the folder and the problem.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"run folder {run_dir} is not writable ({err.strerror}); choose another with run_dir=..."
        ) from None
    free = shutil.disk_usage(run_dir).free / 2**30
    if free < min_free_gb:
        raise ConfigError(
            f"only {free:.2f} GiB free under {run_dir} (need {min_free_gb} GiB for checkpoints); free space or "
            "choose another run_dir"
        )


def _agree_run_dir(method: str, config: TrainConfig) -> Path:
    """Every rank uses rank 0's run folder (torchrun starts ranks without one)."""
    path = [str(Path(config.run_dir) if config.run_dir else default_run_dir(method, config))]
    if dist.is_initialized():
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


class _Logger:
    """Loss lines (JSONL, TensorBoard, a tqdm bar) on the rank that computes the loss."""

    def __init__(self, run_dir: Path, total: int, active: bool, log_every: int, start: int = 0) -> None:
        self.active, self.log_every = active, log_every
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.file = (run_dir / "log.jsonl").open("a")
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(
            total=total, initial=start, desc=run_dir.name, unit="step", dynamic_ncols=True, file=sys.stderr
        )
        self.start = time.perf_counter()

    def step(self, step: int, losses: dict[str, float] | None, lr: float, skipped: int = 0) -> None:
        if not self.active or losses is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['loss']:.4f}", skipped=skipped)
        if step % self.log_every == 0 or skipped:
            line = {
                "step": step,
                "lr": lr,
                "time_s": time.perf_counter() - self.start,
                "skipped_steps": skipped,
                **losses,
            }
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


def _manifest(method: str, config: TrainConfig, runner: Any, world: int) -> dict[str, Any]:
    pipeline = config.pipeline()
    return {
        "method": method,
        "schedule": config.schedule,
        "world_size": world,
        "microbatches": config.microbatches,
        "backward_pieces": pipeline.pieces,
        "balance": list(getattr(runner, "balance", []) or []) or None,
        "teacher_balance": list(getattr(runner, "teacher_balance", []) or []) or None,
        "torch": torch.__version__,
        "seed": config.seed,
    }


def _save_checkpoint(run_dir: Path, runner: Any, step: int, config: TrainConfig, manifest: dict) -> Path:
    """Every rank saves its state; rank 0 the manifest; the launcher learns the folder."""
    from core import checkpoint

    state = {
        "state": runner.checkpoint_state(),
        "stage": runner.stage_state(),
        "config": dataclasses.asdict(config),
    }
    folder = checkpoint.save(run_dir, step, state, manifest)
    status = os.environ.get("TSPIPE_STATUS_DIR")
    if status and (not dist.is_initialized() or dist.get_rank() == 0):
        checkpoint.atomic_write_text(str(folder), Path(status) / "checkpoint")
    return folder


class _Faults:
    """Test aid: ``inject_fault`` makes a rank die (``kill:STEP:RANK``), hang
    (``hang:STEP:RANK``) or the loss turn NaN (``nan:STEP``) when step STEP starts."""

    def __init__(self, spec: str) -> None:
        self.kind, self.step, self.rank = "", -1, -1
        if spec:
            parts = spec.split(":")
            self.kind, self.step = parts[0], int(parts[1])
            self.rank = int(parts[2]) if len(parts) > 2 else -1

    def before_step(self, step: int, rank: int, run_dir: Path) -> None:
        if step != self.step or rank != self.rank:
            return
        (run_dir / "fault.json").write_text(
            json.dumps({"fault": self.kind, "step": step, "rank": rank, "time": time.time()})
        )
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            time.sleep(10**6)

    def wrap(self, task: Task) -> Task:
        """Make ``task``'s loss non-finite at the faulty step (``nan``)."""
        if self.kind != "nan":
            return task
        context_fn, loss_fn = task.loss_context, task.loss

        def loss_context(batch: Any, step: int) -> Any:
            return {"inner": context_fn(batch, step), "step": step}

        def loss(student: Any, teacher: Any, context: Any) -> dict[str, torch.Tensor]:
            out = loss_fn(student, teacher, context["inner"])
            if context["step"] == self.step:
                out = {**out, "loss": out["loss"] * float("nan")}
            return out

        task.loss_context, task.loss = loss_context, loss  # type: ignore[method-assign]
        if task.has_microbatch_loss:
            micro = task.microbatch_loss

            def microbatch_loss(view, microbatch, microbatches, student, teacher, context):  # noqa: ANN001
                term = micro(view, microbatch, microbatches, student, teacher, context["inner"])
                return term * float("nan") if context["step"] == self.step else term

            task.microbatch_loss = microbatch_loss  # type: ignore[method-assign]
        return task


def _barrier() -> None:
    """Wait for every rank (rank 0 may be evaluating), with a generous timeout on gloo."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=_dt.timedelta(seconds=3600))
    else:
        dist.barrier()


def run(method: Method, config: TrainConfig) -> dict | None:
    """One rank of a training run.

    Returns:
        On rank 0 the result row (also written to ``row.json``); None elsewhere.
    """
    from core import checkpoint
    from core.engine import make_runner
    from core.runtime import gather_state

    rank = init_distributed(config.device, config.timeout_s)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_default_dtype(getattr(torch, config.dtype))
    run_dir = _agree_run_dir(method.name, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank.rank == 0:
        (run_dir / "config.json").write_text(to_json(config))
    setup = method.setup(config)
    faults = _Faults(config.inject_fault)
    pipeline = config.pipeline()
    runner = make_runner(faults.wrap(setup.task), pipeline, rank.device, setup.optimizer, setup.scheduler)
    manifest = _manifest(method.name, config, runner, rank.world)
    steps = setup.steps
    epoch_steps = setup.steps_per_epoch
    start = 0
    if config.resume:
        folder = checkpoint.latest(run_dir) if config.resume == "auto" else Path(config.resume)
        if folder is not None:
            checkpoint.check_manifest(checkpoint.read_manifest(folder), manifest)
            saved = checkpoint.load(folder, rank.rank)
            runner.load_checkpoint_state(saved["state"])
            start = saved["step"]
            log.info("resuming from %s at step %d", folder, start)
    if hasattr(runner, "keep_previous_teacher"):
        every = config.checkpoint_every
        runner.keep_previous_teacher = lambda b: b + 1 == steps or bool(every and (b + 1) % every == 0)
    loss_rank = 0 if config.schedule == "ddp" else rank.world - 1
    logger = _Logger(run_dir, steps, rank.rank == loss_rank, config.log_every, start)
    evals: list[dict] = []
    eval_file = run_dir / "eval.jsonl"

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
        _barrier()

    def on_step(b: int, losses: dict[str, float] | None) -> None:
        done = b + 1
        lr = runner.optimizer.param_groups[0]["lr"]
        logger.step(b, losses, lr, runner.skipped_steps)
        if config.eval_every and done % (config.eval_every * epoch_steps) == 0 and done < steps:
            evaluate(done)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < steps:
            _save_checkpoint(run_dir, runner, done, config, manifest)
        faults.before_step(done, rank.rank, run_dir)

    faults.before_step(start, rank.rank, run_dir)
    if start < steps:
        history = runner.run(setup.batches(start, steps - start), steps - start, on_step, start=start)
    else:
        history = None
    logger.close()
    evaluate(steps)
    if start < steps:
        _save_checkpoint(run_dir, runner, steps, config, manifest)
    runner.close()
    final_loss = [history.losses[-1]["loss"] if history and history.losses else None]
    if dist.is_initialized() and rank.world > 1:  # the loss lives on the last stage; rows come from rank 0
        dist.broadcast_object_list(final_loss, src=loss_rank)
    if rank.rank != 0:
        if dist.is_initialized():
            dist.destroy_process_group()
        return None
    ends = history.step_end_s if history else []
    durations = [b - a for a, b in zip(ends, ends[1:])]
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
        final_loss=final_loss[0],
        backward_pieces=pipeline.pieces,
        resumed_from=start or None,
        skipped_steps=runner.skipped_steps,
    )
    (run_dir / "row.json").write_text(json.dumps(row, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return row
