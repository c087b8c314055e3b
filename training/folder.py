"""The run folder: where it is, that it can be written, what its checkpoints must match, and
saving a checkpoint from every rank."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core import checkpoint
from core.config import Config
from core.overrides import ConfigError, to_dict, to_json
from core.runtime import Runner

ROOT = Path(__file__).resolve().parent.parent


def default_run_dir(method: str, config: Config) -> Path:
    """``runs/<method>/<time>-<schedule>-N<stages>-M<micro>-s<seed>`` under the repository."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    p = config.pipeline
    dp = f"-D{p.dp}" if p.dp > 1 else ""
    return (
        ROOT / "runs" / method / f"{stamp}-{p.schedule}{dp}-N{p.stages}-M{p.microbatches}-s{config.run.seed}"
    )


def config_digest(config: Config, student_delay: int = 0) -> str:
    """What a run computes, as 16 hex digits: its resolved config without where it writes or
    resumes from, and its student delay. Equal digests and an equal numerics fingerprint let an
    accuracy matrix keep a row instead of running it again (``experiments.accuracy``)."""
    run = replace(config.run, run_dir="", resume="")
    text = to_json(replace(config, run=run)) + f"\nstudent_delay={student_delay}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def expected_manifest(method: str, config: Config, student_delay: int = 0) -> dict[str, Any]:
    """What a checkpoint this run resumes from must have been made with (what is known before
    the runner exists; the balances are checked again by the ranks). ``student_delay``
    (``training.delay``) is recorded only when set, and checked here, not by the engine."""
    p = config.pipeline
    return {
        "method": method,
        "schedule": p.schedule,
        "world_size": p.world,
        "dp": p.dp,
        "microbatches": p.microbatches,
        "backward_pieces": p.pieces,
        "teacher_lookahead": p.teacher_lookahead,
        **({"student_delay": student_delay} if student_delay else {}),
    }


def check_student_delay(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """A checkpoint resumes only a run with its own student delay (none recorded: 0).

    Raises:
        ValueError: saying both delays.
    """
    was, now = found.get("student_delay", 0), expected.get("student_delay", 0)
    if was != now:
        raise ValueError(
            f"cannot resume: the checkpoint was made with a different setup (student_delay: checkpoint "
            f"{was}, now {now}); resume with the same settings or start a new run folder"
        )


def manifest(
    method: str, config: Config, runner: Runner, world: int, student_delay: int = 0
) -> dict[str, Any]:
    """The manifest of this run's checkpoints."""
    return {
        **expected_manifest(method, config, student_delay),
        "world_size": world,
        "balance": list(runner.balance) if runner.balance else None,
        "teacher_balance": list(runner.teacher_balance) if runner.teacher_balance else None,
        "torch": torch.__version__,
        "seed": config.run.seed,
    }


def resume_folder(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint a run resumes from: the latest complete one (``auto``), or the one named."""
    if not resume:
        return None
    return checkpoint.latest(run_dir) if resume == "auto" else Path(resume)


def check_resume(run_dir: Path, method: str, config: Config, student_delay: int = 0) -> None:
    """With ``resume`` set, the checkpoint must come from the same setup.

    Raises:
        ConfigError: for a missing explicit checkpoint or a mismatched one.
    """
    resume = config.run.resume
    folder = resume_folder(run_dir, resume)
    if folder is None:
        return  # nothing to resume: a fresh start
    if resume != "auto" and not checkpoint.complete(folder):
        raise ConfigError(f"resume={resume}: not a complete checkpoint folder (manifest and rank files)")
    try:
        found, expected = checkpoint.read_manifest(folder), expected_manifest(method, config, student_delay)
        checkpoint.check_manifest(found, expected)
        check_student_delay(found, expected)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def save_checkpoint(run_dir: Path, runner: Runner, step: int, config: Config, manifest_: dict) -> Path:
    """Every rank saves its state; rank 0 the manifest; the launcher learns the folder."""
    state = {"state": runner.checkpoint_state(), "stage": runner.stage_state(), "config": to_dict(config)}
    folder = checkpoint.save(run_dir, step, state, manifest_)
    status = os.environ.get("TSPIPE_STATUS_DIR")
    if status and (not dist.is_initialized() or dist.get_rank() == 0):
        checkpoint.atomic_write_text(str(folder), Path(status) / "checkpoint")
    return folder


def agree_run_dir(method: str, config: Config) -> Path:
    """Every rank uses rank 0's run folder (torchrun starts ranks without one)."""
    path = [str(Path(config.run.run_dir) if config.run.run_dir else default_run_dir(method, config))]
    if dist.is_initialized():
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def barrier() -> None:
    """Wait for every rank (rank 0 may be evaluating), with a generous timeout on gloo."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=_dt.timedelta(seconds=3600))
    else:
        dist.barrier()
