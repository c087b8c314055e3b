"""The command line of a training run: a method, a preset, flags and ``key=value`` overrides
become one :class:`core.config.Config`, checked before any process starts; then the run starts
here or with one process per stage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from core.config import Config
from core.launch import in_launched_job, launch
from core.overrides import ConfigError, apply_overrides
from core.runtime import resolve_balances
from core.schedules import get_schedule, schedules
from methods.common.data import DataNotFound
from methods.registry import get_method, method_names
from methods.spec import MethodSpec
from training import folder
from training.faults import Faults

# command-line flags and the config fields they set
FLAGS = {
    "schedule": "pipeline.schedule",
    "stages": "pipeline.stages",
    "dp": "pipeline.dp",
    "microbatches": "pipeline.microbatches",
    "device": "run.device",
    "run_dir": "run.run_dir",
}


def parse_args(argv: Sequence[str]) -> tuple[MethodSpec, Config, int]:
    """The method, the config and the student delay (``training.delay``; 0: none) a command line
    asks for.

    Raises:
        ConfigError: for anything wrong with the method, the preset or the config.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a method with any schedule: " + ", ".join(s.name for s in schedules()),
    )
    parser.add_argument("method", help=f"one of: {', '.join(method_names())}")
    parser.add_argument("--preset", default=None, help="a preset of the method (default: its CPU default)")
    parser.add_argument("--schedule")
    parser.add_argument("--stages", type=int)
    parser.add_argument(
        "--dp", type=int, help="data-parallel replicas of the pipeline (dp x stages processes)"
    )
    parser.add_argument("--microbatches", type=int)
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--run-dir", dest="run_dir")
    parser.add_argument(
        "--student-delay",
        type=int,
        default=0,
        metavar="K",
        help="accuracy ablation only: apply the student's gradients K steps late (training.delay)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides (dotted keys reach a section)"
    )
    args = parser.parse_intermixed_args(list(argv))
    try:
        spec = get_method(args.method)
        base = spec.preset(args.preset or spec.default_preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.student_delay < 0:
        raise ConfigError(f"--student-delay must be >= 0 steps, got {args.student_delay}")
    flags = [f"{FLAGS[k]}={getattr(args, k)}" for k in FLAGS if getattr(args, k) is not None]
    return spec, apply_overrides(base, [*flags, *args.overrides]), args.student_delay


def replicas_from_world(config: Config) -> Config:
    """Inside a launched job (torchrun, ``core.launch``): a pipeline schedule without ``dp``
    takes ``dp = WORLD_SIZE / stages``; a world that does not fit the config is refused.

    Raises:
        ConfigError: if the job's world size is not ``stages x dp``.
    """
    if not in_launched_job():
        return config
    world, p = int(os.environ["WORLD_SIZE"]), config.pipeline
    if p.dp == 1 and get_schedule(p.schedule).runner == "pipeline" and world > p.stages:
        if world % p.stages == 0:
            config = replace(config, pipeline=replace(p, dp=world // p.stages))
    if config.pipeline.world != world:
        raise ConfigError(
            f"the job has {world} processes but {p.schedule} with {p.stages} stages x dp {config.pipeline.dp} "
            f"needs {config.pipeline.world}; start {config.pipeline.world} processes or change --stages/--dp"
        )
    return config


def check_blocks(spec: MethodSpec, config: Config) -> None:
    """Stages and balances must fit the task's blocks (raises ValueError saying what to change)."""
    task = spec.make_task(config)
    student = task.build_student()
    teacher = task.build_teacher(student)
    resolve_balances(config.pipeline, task, len(student), len(teacher))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: validate, then run here or relaunch with one process per stage.

    Returns:
        The exit status: 0 on success, 2 for a bad config or missing data (one line on stderr),
        otherwise the failing rank's status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        Faults()  # a malformed TSPIPE_FAULT fails here, not in a rank
        spec, config, delay = parse_args(argv)
        config = replicas_from_world(config)
        spec.check(config)
        world = config.pipeline.world
        if config.run.device == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device=cuda but CUDA is not available; use --device cpu")
            if not in_launched_job() and world > torch.cuda.device_count():
                raise ConfigError(
                    f"{world} processes but {torch.cuda.device_count()} GPUs: NCCL refuses two ranks "
                    "on one GPU; use at most one stage per GPU"
                )
        check_blocks(spec, config)
        if not in_launched_job():
            run_dir = (
                Path(config.run.run_dir) if config.run.run_dir else folder.default_run_dir(spec.name, config)
            )
            folder.check_output(run_dir, config.run.min_free_gb)
            folder.check_resume(run_dir, spec.name, config, delay)
            config = replace(config, run=replace(config.run, run_dir=str(run_dir)))
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if world > 1 and not in_launched_job():
        argv = [a for a in argv if not a.startswith(("run_dir=", "run.run_dir="))]
        return launch(world, ["training", *argv, f"run.run_dir={config.run.run_dir}"])
    from training.run import run

    run(spec, config, student_delay=delay)
    return 0
