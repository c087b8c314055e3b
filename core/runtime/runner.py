"""The :class:`Runner` protocol every way of running a task implements, what a run reports
(:class:`StepLog`), and :func:`make_runner`, which picks the runner a schedule's spec names."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from core.config import PipelineConfig
from core.metrics import TimelineRecord
from core.runtime.transport import Transport
from core.schedules import get_schedule
from core.task import Task

OptimizerFactory = Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
OnStep = Callable[[int, "dict[str, float] | None"], None]


@dataclass
class StepLog:
    """What one rank saw of the run.

    Attributes:
        step_end_s: ``time.perf_counter()`` at the end of each optimizer step on this rank.
        losses: per step, the loss dict (the rank that computes the loss; empty elsewhere).
        records: timeline records (when recording), times in ms from ``t0_s``.
        t0_s: ``time.perf_counter()`` when the run started on this rank (after a barrier).
    """

    step_end_s: list[float] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    records: list[TimelineRecord] = field(default_factory=list)
    t0_s: float = 0.0


def step_loop(
    steps: range,
    step: Callable[[int, StepLog], dict[str, float] | None],
    on_step: OnStep | None,
    start_barrier: Callable[[], None] | None,
) -> StepLog:
    """The loop every runner runs: after a barrier of all ranks, each step (``step(b, log)``
    returns this rank's losses, or None), its end time, its losses, then ``on_step``.

    Returns:
        This rank's :class:`StepLog`.
    """
    log = StepLog()
    if start_barrier is not None:
        start_barrier()
    log.t0_s = time.perf_counter()
    for b in steps:
        losses = step(b, log)
        log.step_end_s.append(time.perf_counter())
        if losses is not None:
            log.losses.append(losses)
        if on_step is not None:
            on_step(b, losses)
    return log


class Runner(Protocol):
    """One rank of a run, whatever runs it (the pipeline interpreter, ddp, the torch peer).

    Attributes:
        device: this rank's device.
        optimizer: of this rank's student parameters.
        balance, teacher_balance: blocks per stage (None for runners holding whole models).
        loss_rank: the rank whose :class:`StepLog` has the losses.
        skipped_steps: steps the NaN guard skipped.
    """

    device: torch.device
    optimizer: torch.optim.Optimizer
    balance: tuple[int, ...] | None
    teacher_balance: tuple[int, ...] | None
    loss_rank: int

    @property
    def skipped_steps(self) -> int: ...

    def run(
        self, batches: Iterable[Any], steps: int, on_step: OnStep | None = None, start: int = 0
    ) -> StepLog:
        """Train ``steps`` mini-batches drawn from ``batches`` (every rank passes the same data
        in the same order), the first being mini-batch ``start``; ``on_step`` is called after
        each step with its index and, on the loss rank, its losses."""

    def keep_teacher_at(self, steps: Callable[[int], bool]) -> None:
        """Steps a checkpoint will follow (a stale teacher keeps the version resume needs)."""

    def checkpoint_state(self) -> dict[str, Any]:
        """This rank's state for a checkpoint (see ``core.runtime.state``)."""

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`."""

    def stage_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's weights keyed by global block index (CPU copies)."""

    def close(self) -> None:
        """Release what the runner holds (message groups)."""


def make_runner(
    task: Task,
    config: PipelineConfig,
    device: torch.device,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None = None,
    transport: Transport | None = None,
) -> Runner:
    """The runner ``config.schedule``'s spec names: the pipeline interpreter for schedules built
    from actions, ddp or the torch peer for those runners.

    Args:
        transport: the pipeline's network (default: ``torch.distributed`` when a process group
            is up, else none); the other runners use ``torch.distributed`` directly.

    Raises:
        ValueError: if the task, config and process count do not fit together.
    """
    spec = get_schedule(config.schedule)
    spec.check(config.stages, config.microbatches, config.backward_pieces, task.views)
    if spec.per_unit_loss and not task.has_microbatch_loss:
        raise ValueError(
            f"{config.schedule} computes the loss per micro-batch; {type(task).__name__} defines no microbatch_loss"
        )
    if spec.runner == "pipeline":
        from core.runtime.pipeline import PipelineRunner

        return PipelineRunner(task, config, device, optimizer_factory, scheduler_factory, transport)
    if spec.runner == "ddp":
        from core.runtime.ddp import DDPRunner

        return DDPRunner(task, config, device, optimizer_factory, scheduler_factory)
    from core.runtime.torchpipe import TorchPipelineRunner

    return TorchPipelineRunner(task, config, device, optimizer_factory, scheduler_factory)
