"""The outside peer: PyTorch's own ``torch.distributed.pipelining`` on the same task.

What a PyTorch user would write today: the teacher runs as its own forward-only
``ScheduleGPipe`` pass, then the student trains with the public ``ScheduleGPipe`` or
``Schedule1F1B``. Their runtime computes the loss per micro-batch, so the task's
``microbatch_loss`` is used (with every teacher output of the mini-batch at hand, so in-batch
negatives stay global and the gradient equals the single-process one). Only the public API is
touched: ``PipelineStage``, the two schedules and ``step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.config import PipelineConfig
from core.partition import stage_slices
from core.runtime import state as _state
from core.runtime.models import prepare_models, resolve_balances, stage_partition
from core.runtime.runner import OnStep, OptimizerFactory, SchedulerFactory, StepLog, step_loop
from core.runtime.step import EndOfStep, clip_grad_norm_across_stages
from core.runtime.transport import Collectives
from core.schedules import get_schedule
from core.task import Task, gather, map_structure, scatter, unit_slices, upcast

MIN_TORCH = (2, 4)


def peer_available() -> str | None:
    """None when ``torch.distributed.pipelining`` with ``ScheduleGPipe``/``Schedule1F1B`` is
    usable, else the reason it is not."""
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        return f"torch {torch.__version__} has no stable torch.distributed.pipelining (needs >= 2.4)"
    try:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe  # noqa: F401
    except ImportError as err:
        return f"torch.distributed.pipelining is not importable: {err}"
    return None


def shield_shape_inference(module: nn.Module, device: torch.device) -> list[Any]:
    """Hooks that undo what a forward without gradients does to ``module``'s buffers and to the
    random state; the handles, to remove once the first step is done.

    At its first step a ``PipelineStage`` built without shapes infers them by running its module
    once. torch 2.11 runs it on zeros, without gradients and without restoring anything, so a
    student's BatchNorm counts those zeros in its running statistics and dropout draws from the
    random state (later releases back the buffers up themselves). The student never trains
    without gradients, so its real forwards are untouched.
    """
    saved: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]] = []
    cuda = device.type == "cuda"

    def before(mod: nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled():
            saved.append(
                (
                    [b.detach().clone() for b in mod.buffers()],
                    torch.get_rng_state(),
                    torch.cuda.get_rng_state(device) if cuda else None,
                )
            )

    def after(mod: nn.Module, args: Any, output: Any) -> None:
        if saved:
            buffers, cpu_rng, cuda_rng = saved.pop()
            with torch.no_grad():
                for b, old in zip(mod.buffers(), buffers):
                    b.copy_(old)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, device)

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


class TorchPipelineRunner(_state.RunnerState):
    """``torch-gpipe`` / ``torch-1f1b`` on the task interface: the spec's ``student_schedule``
    names the torch schedule of the student pass.

    Args: as :class:`core.runtime.pipeline.PipelineRunner`.

    Raises:
        ValueError: if the torch pipelining API is missing, the world size differs from the
            stage count, the task has no per-micro-batch loss, or a unit is not a tensor.
    """

    def __init__(
        self,
        task: Task,
        config: PipelineConfig,
        device: torch.device,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None = None,
    ) -> None:
        reason = peer_available()
        if reason:
            raise ValueError(f"{config.schedule} unavailable: {reason}")
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        world = dist.get_world_size() if dist.is_initialized() else 1
        if world != config.stages or world < 2:
            raise ValueError(
                f"{config.schedule} needs one process per stage (>= 2); got {world} for {config.stages}"
            )
        self.task, self.config, self.device = task, config, device
        self.rank, self.stages = dist.get_rank(), world
        self.views = task.views
        self.units = config.microbatches * task.views
        self.loss_rank = world - 1
        self.versions = None
        student, teacher = prepare_models(task)
        balances = resolve_balances(config, task, len(student), len(teacher))
        self.balance, self.teacher_balance = tuple(balances[0]), tuple(balances[1])
        s_part, t_part = stage_partition(student, teacher, balances, self.rank)
        self.student, self.teacher = s_part.to(device), t_part.to(device)
        ranks = list(range(world))
        s_group, t_group = dist.new_group(ranks), dist.new_group(ranks)
        self._groups = [s_group, t_group]
        self._shield = shield_shape_inference(self.student, device)
        s_stage = PipelineStage(self.student, self.rank, world, device, group=s_group)
        t_stage = PipelineStage(self.teacher, self.rank, world, device, group=t_group)
        schedule_cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[
            get_schedule(config.schedule).student_schedule
        ]
        kwargs: dict[str, Any] = {"loss_fn": self._loss_fn}
        if "scale_grads" in inspect.signature(schedule_cls.__init__).parameters:
            kwargs["scale_grads"] = False  # microbatch_loss terms already sum to the loss
            self._loss_scale = 1.0
        else:  # older releases average over micro-batches
            self._loss_scale = float(self.units)
        self.schedule = schedule_cls(s_stage, self.units, **kwargs)
        self.teacher_schedule = ScheduleGPipe(t_stage, self.units)
        self._pre_split = "arg_mbs" in inspect.signature(schedule_cls.step).parameters
        self.optimizer = optimizer_factory(
            [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        )
        self.scheduler = scheduler_factory(self.optimizer) if scheduler_factory else None
        self._current: tuple[list[Any], Any] | None = None
        # ranks hold different gradients: a skip must be agreed on by all of them
        self._agree = Collectives()
        self.end_step = EndOfStep(
            task,
            self.student,
            self.teacher,
            self.optimizer,
            self.scheduler,
            config.nan_guard,
            self._clip if config.max_grad_norm else None,
            device,
            agree=self._agree,
            rank=self.rank,
        )

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp_bf16)

    def _loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        teacher, context = self._current
        m, v = divmod(int(target.reshape(-1)[0]), self.views)
        return (
            self.task.microbatch_loss(v, m, self.config.microbatches, upcast(output), teacher, context)
            * self._loss_scale
        )

    def _units(self, views: list[Any]) -> list[torch.Tensor]:
        parts = [
            scatter(map_structure(lambda t: t.to(self.device), v), self.config.microbatches) for v in views
        ]
        units = [parts[u % self.views][u // self.views] for u in range(self.units)]
        if not all(isinstance(x, torch.Tensor) for x in units):
            raise ValueError("the torch pipelining peer passes tensors between stages, not dicts")
        return units

    def _step(self, schedule: Any, units: list[torch.Tensor] | None, **kwargs: Any) -> Any:
        if self.rank != 0:
            return schedule.step(**kwargs)
        if self._pre_split:
            return schedule.step(arg_mbs=[(x,) for x in units], **kwargs)
        if len({x.shape[0] for x in units}) != 1:
            raise ValueError(
                "this torch release splits the batch itself: make the batch divisible by micro-batches"
            )
        return schedule.step(torch.cat(units), **kwargs)

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
        last = self.rank == self.stages - 1
        m = self.config.microbatches

        def step(b: int, log: StepLog) -> dict[str, float] | None:
            batch = next(it)
            s_units = t_units = None
            if self.rank == 0:
                s_views, t_views = self.task.split_inputs(batch, b)
                s_units, t_units = self._units(s_views), self._units(t_views)
            with torch.no_grad(), self._autocast():
                t_out = self._step(self.teacher_schedule, t_units)
            if last:
                # the merged output holds the units in order; split it back and regroup by view
                samples = t_out.shape[0] // self.views
                lengths = [len(range(samples)[sl]) for sl in unit_slices(samples, m)]
                per_unit = torch.split(t_out, [lengths[u // self.views] for u in range(self.units)])
                teacher = [
                    upcast(gather([per_unit[k * self.views + v] for k in range(m)]))
                    for v in range(self.views)
                ]
                self._current = (teacher, self.task.loss_context(batch, b))
            losses: list[torch.Tensor] = []
            with self._autocast():
                if last:
                    target = torch.arange(self.units, device=self.device)
                    if self._pre_split:
                        self.schedule.step(target_mbs=list(target.split(1)), losses=losses)
                    else:
                        self.schedule.step(target=target, losses=losses)
                else:
                    self._step(self.schedule, s_units)
            for handle in self._shield:  # the stage has inferred its shapes
                handle.remove()
            self._shield = []
            total = sum(x.detach() for x in losses) if last and losses else None
            self.end_step(b, total)
            return {"loss": float(sum(x.detach() for x in losses)) / self._loss_scale} if last else None

        return step_loop(range(start, start + steps), step, on_step, dist.barrier)

    def _clip(self) -> None:
        clip_grad_norm_across_stages(
            self.student.parameters(), self.config.max_grad_norm, self.device, self._agree.all_reduce
        )

    def stage_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """This stage's weights keyed by global block index."""
        return {
            "student": _state.global_state(self.student, stage_slices(self.balance)[self.rank]),
            "teacher": _state.global_state(self.teacher, stage_slices(self.teacher_balance)[self.rank]),
        }

    def close(self) -> None:
        """Destroy the two process groups and drop the schedules that hold them: each group has
        its own communication threads, which a process running many runs (the bench's worker)
        would otherwise keep, and wake, until a garbage collection found the cycle."""
        for group in self._groups:
            dist.destroy_process_group(group)
        self._groups = []
        self.schedule = self.teacher_schedule = None
