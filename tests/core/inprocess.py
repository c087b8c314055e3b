"""Run a whole pipeline inside the test process: one thread per stage over the in-process
network (``core.runtime.LocalNetwork``), no process group."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.config import PipelineConfig
from core.runtime import LocalNetwork, make_runner, merge_states
from core.task import Task
from tests.core.toy import ToyTask, make_batches, reference, sgd


def run_in_process(
    make_task: Callable[[], Task],
    config: PipelineConfig,
    batches: Sequence[Any],
    steps: int,
    optimizer: Callable = sgd,
    timeout_s: float = 20.0,
) -> tuple[dict[str, dict[str, torch.Tensor]], list]:
    """Train ``steps`` steps of ``config`` with one thread per stage.

    Returns:
        The merged ``{"student": ..., "teacher": ...}`` state and every stage's StepLog.

    Raises:
        RuntimeError: the first stage's failure (the others then time out on their receives).
    """
    network = LocalNetwork(config.stages, timeout_s)
    # built one after another: model construction seeds the global generator
    runners = [
        make_runner(make_task(), config, torch.device("cpu"), optimizer, transport=network.transport(rank))
        for rank in range(config.stages)
    ]
    logs: list = [None] * config.stages
    errors: list[BaseException] = []

    def stage(rank: int) -> None:
        try:
            logs[rank] = runners[rank].run(list(batches), steps)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=stage, args=(rank,)) for rank in range(config.stages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a stage failed: {errors[0]}") from errors[0]
    return merge_states([r.stage_state() for r in runners]), logs


def fp64_threads_and_reference(
    config: PipelineConfig, steps: int, staleness: int
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
    """An EMA toy run of ``config`` in float64, in threads, and the plain reference whose teacher
    is ``staleness`` versions behind (clipping as ``config`` says): ``(got, want)`` states."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got, _ = run_in_process(lambda: ToyTask("ema", True, steps), config, make_batches(steps), steps)
        want = reference(
            ToyTask("ema", True, steps),
            make_batches(steps),
            config.microbatches,
            config.pieces,
            staleness,
            max_grad_norm=config.max_grad_norm,
        )
    finally:
        torch.set_default_dtype(previous)
    return got, want
