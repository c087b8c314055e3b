"""The pipeline runner: one stage per rank, running its lowered action list over a transport.

It composes the pieces of this package: the stage's compute (:mod:`core.runtime.stage`), the
action interpreter, the transport, the end of step and the teacher's versions. The same code
runs on gloo (CPU), NCCL (CUDA) and the in-process network of the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from core.action import Op
from core.config import PipelineConfig
from core.partition import stage_slices
from core.runtime import state as _state
from core.runtime.compiled import compile_stage
from core.runtime.hoststaged import HostStagedTransport, choose_transport
from core.runtime.interpreter import Interpreter
from core.runtime.models import prepare_models, resolve_balances, stage_partition
from core.runtime.replicas import Replicas, make_replicas
from core.runtime.runner import OnStep, OptimizerFactory, SchedulerFactory, StepLog, step_loop
from core.runtime.stage import Stage
from core.runtime.step import EndOfStep, clip_grad_norm_across_stages
from core.runtime.transport import Solo, TorchTransport, Transport
from core.runtime.versions import TeacherVersions
from core.schedules import Program, get_schedule
from core.task import Task
from core.validate import validate


def last_backward(segment: list[Any], batch: int) -> Any:
    """The last backward action (``SB`` or ``SW``) of mini-batch ``batch`` in a rank's segment
    (None without one): once it ran, the stage's gradients of that step are final."""
    backwards = [a for a in segment if a.op in (Op.SB, Op.SW) and a.batch == batch]
    return backwards[-1] if backwards else None


def network(config: PipelineConfig, device: torch.device, replicas: Replicas | None = None) -> Transport:
    """The ``torch.distributed`` transport ``config.transport`` names (host-staged when
    ``auto`` finds the ranks sharing a GPU), inside this rank's replica."""
    replicas = replicas or Replicas()
    mesh = (replicas.pipelines or None, replicas.pp_group)
    if choose_transport(config.transport, device.type, dist.get_world_size()) == "host":
        return HostStagedTransport(device, config.timeout_s, *mesh)
    return TorchTransport(device, config.timeout_s, *mesh)


class PipelineRunner(_state.RunnerState):
    """One pipeline stage of a run: its partitions, optimizer, transport and action program.

    Args:
        task: what to train.
        config: the pipeline part of the run; ``config.stages`` must equal the transport's world.
        device: this rank's device.
        optimizer_factory: builds the stage's optimizer from its named student parameters.
        scheduler_factory: optional, builds a learning-rate scheduler stepped after each step.
        transport: the network to the other stages (default: ``torch.distributed`` when a
            process group is up, else a single process).

    With ``config.dp`` > 1 the job's ranks form ``dp`` replicas of the pipeline (see
    :mod:`core.runtime.replicas`); this rank is stage ``rank`` of replica ``replicas.index``.

    Raises:
        ValueError: if the world size differs from the stage count (times dp), or balances do not fit.
    """

    def __init__(
        self,
        task: Task,
        config: PipelineConfig,
        device: torch.device,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.replicas = Replicas()
        self._reduce_after: Any = None  # the stage's last backward action of the current step
        self._pending: Any = None  # its dp gradient sum, in flight until the optimizer step
        if config.dp > 1:
            if transport is not None:
                raise ValueError("dp > 1 runs over torch.distributed; pass no transport")
            self.replicas = make_replicas(config.dp, config.stages, device)
        if transport is None:
            distributed = dist.is_initialized() and dist.get_world_size() > 1
            transport = network(config, device, self.replicas) if distributed else Solo()
        if transport.world != config.stages:
            raise ValueError(
                f"{config.schedule} with {config.stages} stages needs {config.stages} processes, got {transport.world}"
            )
        self.task, self.config, self.device, self.transport = task, config, device, transport
        self.rank = transport.rank
        self.loss_rank = config.stages - 1
        self.spec = get_schedule(config.schedule)
        student, teacher = prepare_models(task)
        balances = resolve_balances(config, task, len(student), len(teacher))
        self.balance, self.teacher_balance = tuple(balances[0]), tuple(balances[1])
        s_part, t_part = stage_partition(student, teacher, balances, self.rank)
        self.student, self.teacher = s_part.to(device), t_part.to(device)
        self.student_blocks = stage_slices(self.balance)[self.rank]
        self.teacher_blocks = stage_slices(self.teacher_balance)[self.rank]
        del student, teacher
        self.optimizer = optimizer_factory(
            [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        )
        self.scheduler = scheduler_factory(self.optimizer) if scheduler_factory else None
        self.versions = TeacherVersions(
            task.teacher_rule.kind == "ema",
            self.spec.staleness(task.teacher_rule.kind, config.teacher_lookahead),
            self.rank,
        )
        self.stage = Stage(task, config, self.student, self.teacher, self.rank, device, self.replicas)
        self.stage.student_fn, self.stage.teacher_fn = compile_stage(self.student, self.teacher, config)
        self.end_step = EndOfStep(
            task,
            self.student,
            self.teacher,
            self.optimizer,
            self.scheduler,
            config.nan_guard,
            self._clip if config.max_grad_norm is not None else None,
            device,
            agree=transport if config.stages > 1 else None,
            versions=self.versions,
            rank=self.rank,
            distributed_bn=config.dp > 1,
            bn_group=self.replicas.group,
        )

    def _clip(self) -> None:
        reduce = self.transport.all_reduce if self.config.stages > 1 else None
        clip_grad_norm_across_stages(
            self.student.parameters(), self.config.max_grad_norm, self.device, reduce
        )

    def _teacher_forward(self, a: Any) -> None:
        self.stage.teacher_forward(a, self.versions.teacher_for(a.batch, self.teacher))

    def _backward(self, a: Any) -> None:
        self.stage.backward(a)
        self._after_backward(a)

    def _weight_backward(self, a: Any) -> None:
        self.stage.weight_backward(a)
        self._after_backward(a)

    def _after_backward(self, a: Any) -> None:
        """After the stage's last backward of a step, start the dp gradient sum, so it runs
        beside whatever the stage does before its optimizer step (tspipe's late next-batch
        teacher forwards)."""
        if a == self._reduce_after:
            self._pending = self.replicas.start_reduce(self.student.parameters())

    def _step(self, a: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.finish()
        else:
            self.replicas.reduce_grads(self.student.parameters())
        self.end_step(a.batch)
        self.stage.finish(a.batch)

    def run(
        self, batches: Iterable[Any], steps: int, on_step: OnStep | None = None, start: int = 0
    ) -> StepLog:
        """Train for ``steps`` mini-batches drawn from ``batches`` (every rank passes the same
        data in the same order; only the first and last stage read it).

        Args:
            batches: iterable of data batches (as ``task.split_inputs`` expects), the first one
                being mini-batch ``start``.
            steps: optimizer steps to run.
            on_step: called after each step with the step index and, on the last stage, its losses.
            start: index of the first mini-batch: a resumed run continues where its checkpoint
                ended (after :meth:`load_checkpoint_state`).

        Returns:
            This rank's :class:`StepLog`.

        Raises:
            RuntimeError: when an action fails; the message names the rank and the action and
                shows every stage's actions of that step with the failing one marked.
        """
        config = self.config
        program = Program.build(
            config.schedule,
            config.stages,
            config.microbatches,
            self.task.teacher_rule.kind,
            steps,
            config.pieces,
            self.task.views,
            start,
            config.teacher_early,
            config.teacher_lookahead,
        )
        validate(program.template)
        self.versions.start(self.teacher, start)
        self.stage.begin(batches, start, steps)
        compute = {
            Op.TF: self._teacher_forward,
            Op.SF: self.stage.student_forward,
            Op.LOSS: self.stage.loss,
            Op.SB: self._backward,
            Op.SW: self._weight_backward,
            Op.OPT: self._step,
        }
        interpreter = Interpreter(
            compute,
            self.stage.store,
            self.transport,
            program.template.rank_of,
            self.rank,
            self.device,
            config.record_timeline,
        )

        end = program.batches().stop
        built: dict[int, list] = {}  # the next step's segment, built once for its receives

        def step(b: int, log: StepLog) -> dict[str, float] | None:
            segment = built.pop(b, None) or program.segment(self.rank, b)
            if self.replicas.size > 1:
                self._reduce_after = last_backward(segment, b)
            if b + 1 < end:
                built[b + 1] = program.segment(self.rank, b + 1)
            interpreter.prepost(b, [segment, *built.values()])
            interpreter.run(segment, b, log.t0_s, log.records, lambda: program.grid(b))
            return self.stage.losses.pop(b, None)

        barrier = self.transport.barrier if config.stages > 1 else None
        log = step_loop(program.batches(), step, on_step, barrier)
        self.transport.drain()
        return log

    def close(self) -> None:
        """Release the message groups and the replicas' mesh."""
        self.transport.close()
        self.transport = Solo()
        self.replicas.close()

    def stage_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "student": _state.global_state(self.student, self.student_blocks),
            "teacher": _state.global_state(self.teacher, self.teacher_blocks),
        }
