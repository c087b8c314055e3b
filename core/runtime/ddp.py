"""Data-parallel runner: torch DistributedDataParallel over all ranks, the teacher replicated.

Each rank runs one slice of the global mini-batch (micro-batch ``rank`` of ``world``). Student
and teacher outputs are gathered from every rank (the student's with gradient), so the loss
runs over the whole mini-batch on every rank: in-batch negatives (MoCo-v3) are the global batch,
and the gradient equals single-process training with ``world`` micro-batches. Deferred
BatchNorm statistics are summed over ranks before they are committed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.config import PipelineConfig
from core.runtime import state as _state
from core.runtime.models import prepare_models
from core.runtime.replicas import all_gather_structure
from core.runtime.runner import OnStep, OptimizerFactory, SchedulerFactory, StepLog, step_loop
from core.runtime.step import EndOfStep
from core.task import Structure, Task, map_structure, scatter, upcast


class _Views(nn.Module):
    """Runs the student on every view in one forward call (DDP expects one call per backward)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, views: list[Structure]) -> list[Structure]:
        return [self.body(v) for v in views]


class DDPRunner(_state.RunnerState):
    """Data parallelism on the task interface.

    Args: as :class:`core.runtime.pipeline.PipelineRunner`; ``config.stages`` is the number of
    replicas.

    Raises:
        ValueError: if the world size differs from ``config.stages``.
    """

    def __init__(
        self,
        task: Task,
        config: PipelineConfig,
        device: torch.device,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None = None,
    ) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world != config.stages:
            raise ValueError(
                f"ddp with {config.stages} replicas needs {config.stages} processes, got {world}"
            )
        if world < 2:
            raise ValueError("ddp needs at least 2 processes; use sequential for one")
        self.task, self.config, self.device = task, config, device
        self.rank, self.world = dist.get_rank(), world
        self.balance = self.teacher_balance = None
        self.loss_rank = 0
        self.versions = None
        student, teacher = prepare_models(task)
        self.student = nn.Sequential(*student).to(device)
        self.teacher = nn.Sequential(*teacher).to(device)
        # Buffers are not synchronised in the forward: deferred BatchNorm statistics are summed
        # over ranks at commit instead. (torch >= 2.12 renamed the switch.)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in params
            else {"broadcast_buffers": False}
        )
        self.model = DistributedDataParallel(
            _Views(self.student), device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )
        self.optimizer = optimizer_factory(
            [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        )
        self.scheduler = scheduler_factory(self.optimizer) if scheduler_factory else None
        clip = self._clip if config.max_grad_norm else None
        # every replica holds the same gradients after the all-reduce: no agreement needed
        self.end_step = EndOfStep(
            task,
            self.student,
            self.teacher,
            self.optimizer,
            self.scheduler,
            config.nan_guard,
            clip,
            device,
            distributed_bn=True,
            rank=self.rank,
        )

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp_bf16)

    def _local(self, views: list[Structure]) -> list[Structure]:
        return [map_structure(lambda t: t.to(self.device), scatter(v, self.world)[self.rank]) for v in views]

    def run(
        self,
        batches: Iterable[Any],
        steps: int,
        on_step: OnStep | None = None,
        start: int = 0,
    ) -> StepLog:
        """Train ``steps`` mini-batches from mini-batch ``start``; every rank passes the same
        data in the same order."""
        it = iter(batches)

        def step(b: int, log: StepLog) -> dict[str, float]:
            batch = next(it)
            s_views, t_views = self.task.split_inputs(batch, b)
            with torch.no_grad(), self._autocast():
                t_local = [self.teacher(x) for x in self._local(t_views)]
            t_full = [upcast(all_gather_structure(t, with_grad=False)) for t in t_local]
            with self._autocast():
                s_local = self.model(self._local(s_views))
            s_full = [upcast(all_gather_structure(s, with_grad=True)) for s in s_local]
            out = self.task.loss(s_full, t_full, self.task.loss_context(batch, b))
            out["loss"].backward()
            self.end_step(b, out["loss"])
            return {k: float(v.detach()) for k, v in out.items()}

        return step_loop(range(start, start + steps), step, on_step, dist.barrier)

    def _clip(self) -> None:
        nn.utils.clip_grad_norm_(self.student.parameters(), self.config.max_grad_norm)

    def stage_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The full student and teacher (every rank holds them whole)."""
        return {
            "student": _state.global_state(self.student, range(len(self.student))),
            "teacher": _state.global_state(self.teacher, range(len(self.teacher))),
        }

    def close(self) -> None:
        """Release the DDP wrapper (and its reducer) while the default group is still up. A
        reducer released after the group was destroyed holds the group's last reference, and
        destroys it holding the interpreter lock while gloo's threads may need that lock to
        release a finished work's tensors: on torch 2.11 one training run in five hung there
        at exit."""
        self.model = None
