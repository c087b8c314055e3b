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
from tests.core.toy import sgd


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
