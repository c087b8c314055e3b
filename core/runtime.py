"""Runs one stage's lowered action list in one process, over torch.distributed point-to-point.

The same code runs on gloo (CPU) and NCCL (CUDA). The stage holds its student partition and its
teacher partition; the last stage computes the loss over the whole mini-batch (or per
micro-batch for ``1f1b``) and splits its gradient back into micro-batch pieces. Each action's
start and end can be recorded in the simulator's record format.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.action import Action, Op, format_grid
from core.batchnorm import commit_all, convert_deferred, discard_statistics, set_accumulate
from core.config import PipelineConfig
from core.metrics import TimelineRecord
from core.momentum import TeacherVersion, ema_update_
from core.p2p import Channels
from core.partition import check_balance, stage_slices, uniform_balance
from core.schedule import Program, get_schedule
from core.task import (
    Structure,
    Task,
    detached_leaves,
    gather,
    is_differentiable,
    map_structure,
    scatter,
    sizes,
    split_like,
    upcast,
)
from core.validate import validate

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


@dataclass
class StepLog:
    """What one rank saw of the run.

    Attributes:
        step_end_s: ``time.perf_counter()`` at the end of each optimizer step on this rank.
        losses: per step, the loss dict (last stage only; empty elsewhere).
        records: timeline records (when recording), times in ms from ``t0_s``.
        t0_s: ``time.perf_counter()`` when the run started on this rank (after a barrier).
    """

    step_end_s: list[float] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    records: list[TimelineRecord] = field(default_factory=list)
    t0_s: float = 0.0


def clip_grad_norm_across_stages(
    parameters: Iterable[nn.Parameter], max_norm: float, device: torch.device
) -> float:
    """Clip gradients to a global norm over every stage's parameters, like single-process
    ``torch.nn.utils.clip_grad_norm_`` on the whole model: squared norms are all-reduced.

    Returns:
        The global gradient norm before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = [n.double() ** 2 for n in torch._foreach_norm(grads)] if grads else []
    total = (torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float64)).to(device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    total_norm = total.sqrt()
    if grads:
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(device=grads[0].device, dtype=grads[0].dtype))
    return float(total_norm)


def resolve_balances(
    config: PipelineConfig, task: Task, n_student: int, n_teacher: int
) -> tuple[list[int], list[int]]:
    """Student and teacher balances of a run: explicit ones checked, missing ones uniform.

    An EMA teacher always takes the student's boundaries (predictor blocks excluded).

    Raises:
        ValueError: for balances that do not fit the blocks or stages.
    """
    stages = config.stages
    extra = task.predictor_blocks
    if task.teacher_rule.kind == "ema":
        if n_student - extra != n_teacher:
            raise ValueError(
                f"EMA teacher has {n_teacher} blocks but the student has {n_student - extra} besides "
                f"{extra} predictor blocks; they must mirror each other"
            )
        if config.balance is not None:
            student = list(config.balance)
            check_balance(student, n_student, stages, "student")
        else:
            teacher = uniform_balance(n_teacher, stages, "teacher")
            student = teacher[:-1] + [teacher[-1] + extra]
        teacher = student[:-1] + [student[-1] - extra]
        check_balance(teacher, n_teacher, stages, "teacher (tied to the student)")
        if config.teacher_balance is not None and list(config.teacher_balance) != teacher:
            raise ValueError(
                f"an EMA teacher must be split like the student: teacher_balance {list(config.teacher_balance)} "
                f"!= {teacher}; drop teacher_balance"
            )
        return student, teacher
    student = (
        list(config.balance) if config.balance is not None else uniform_balance(n_student, stages, "student")
    )
    check_balance(student, n_student, stages, "student")
    if config.teacher_balance is not None:
        teacher = list(config.teacher_balance)
    elif config.balance is not None and n_teacher == n_student:
        teacher = list(config.balance)
    else:
        teacher = uniform_balance(n_teacher, stages, "teacher")
    check_balance(teacher, n_teacher, stages, "teacher")
    return student, teacher


def prepare_models(task: Task) -> tuple[list[nn.Module], list[nn.Module]]:
    """Build student and teacher blocks as the engine runs them: BatchNorm deferred in the
    student; an EMA teacher in training mode without statistics of its own, a frozen one in eval
    mode; no gradients for the teacher."""
    student = [convert_deferred(b) for b in task.build_student()]
    teacher = task.build_teacher(student)
    for block in teacher:
        block.requires_grad_(False)
        if task.teacher_rule.kind == "ema":
            convert_deferred(block)
            set_accumulate(block, False)
            block.train()
        else:
            block.eval()
    for block in student:
        block.train()
    return student, teacher


class PipelineRuntime:
    """One pipeline stage of a run: its partitions, optimizer, channels and action program.

    Args:
        task: what to train.
        config: the pipeline part of the run; ``config.stages`` must equal the world size.
        device: this rank's device.
        optimizer_factory: builds the stage's optimizer from its named student parameters.
        scheduler_factory: optional, builds a learning-rate scheduler stepped after each step.

    Raises:
        ValueError: if the world size differs from the stage count, or balances do not fit.
    """

    def __init__(
        self,
        task: Task,
        config: PipelineConfig,
        device: torch.device,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None = None,
    ) -> None:
        if not config.is_pipeline:
            raise ValueError(f"{config.schedule} is not a pipeline schedule; use its runner")
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world != config.stages:
            raise ValueError(
                f"{config.schedule} with {config.stages} stages needs {config.stages} processes, got {world}"
            )
        if config.schedule == "1f1b" and not task.has_microbatch_loss:
            raise ValueError(
                f"1f1b computes the loss per micro-batch; {type(task).__name__} defines no microbatch_loss"
            )
        self.task = task
        self.config = config
        self.device = device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.stages = config.stages
        self.last = self.stages - 1
        self.views = task.views
        self.units = config.microbatches * task.views
        self.pieces = config.pieces
        self.info = get_schedule(config.schedule)
        self.staleness = self.info.staleness(task.teacher_rule.kind)

        student, teacher = prepare_models(task)
        self.balance, self.teacher_balance = resolve_balances(config, task, len(student), len(teacher))
        self.student_blocks = stage_slices(self.balance)[self.rank]
        self.teacher_blocks = stage_slices(self.teacher_balance)[self.rank]
        self.student = nn.Sequential(*[student[i] for i in self.student_blocks]).to(device)
        self.teacher = nn.Sequential(*[teacher[i] for i in self.teacher_blocks]).to(device)
        del student, teacher
        params = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        self.optimizer = optimizer_factory(params)
        self.scheduler = scheduler_factory(self.optimizer) if scheduler_factory else None
        self.teacher_version = TeacherVersion()
        self.channels = Channels(device, config.timeout_s) if world > 1 else None
        # tspipe with an EMA teacher: the teacher version the next mini-batch reads, kept at the
        # steps a checkpoint follows (``keep_previous_teacher``) and restored on resume
        self.keep_previous_teacher: Callable[[int], bool] = lambda step: False
        self._previous_teacher: dict[str, torch.Tensor] | None = None
        self._previous_module: nn.Module | None = None
        self.skipped_steps = 0
        self._status = _StatusFile.open(self.rank)

    # ---- helpers -------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp_bf16)

    def _to_device(self, x: Structure) -> Structure:
        return map_structure(lambda t: t.to(self.device, non_blocking=True), x)

    def _batch(self, b: int) -> Any:
        while self._fetched <= b:
            try:
                self._data[self._fetched] = next(self._iter)
            except StopIteration:
                raise RuntimeError(
                    f"the data ran out at batch {self._fetched}; the run needs {self._steps}"
                ) from None
            self._fetched += 1
        return self._data[b]

    def _inputs(self, b: int) -> tuple[list[Structure], list[Structure]]:
        """Student and teacher inputs of batch ``b``, one per unit (stage 0 only)."""
        if b not in self._unit_inputs:
            s_views, t_views = self.task.split_inputs(self._batch(b), b)
            if len(s_views) != self.views or len(t_views) != self.views:
                raise ValueError(
                    f"split_inputs returned {len(s_views)}/{len(t_views)} views, task declares {self.views}"
                )
            m = self.config.microbatches
            s_parts = [scatter(self._to_device(v), m) for v in s_views]
            t_parts = [scatter(self._to_device(v), m) for v in t_views]
            self._unit_inputs[b] = (
                [s_parts[u % self.views][u // self.views] for u in range(self.units)],
                [t_parts[u % self.views][u // self.views] for u in range(self.units)],
            )
        return self._unit_inputs[b]

    def _prepost(self, segment: list[Action]) -> None:
        """Post this step's receives ahead of time, in order per channel, up to the first one
        whose shape is not known yet (see ``Channels.prepost``)."""
        if self.channels is None:
            return
        stopped: set[str] = set()
        for a in segment:
            if a.op in (Op.RECV_TF, Op.RECV_SF, Op.RECV_SB):
                channel = a.op.value.removeprefix("RECV_")
                if channel not in stopped and not self.channels.prepost(
                    channel, self._peer(a), (a.microbatch, a.part)
                ):
                    stopped.add(channel)

    def _peer(self, a: Action) -> int:
        if a.op in (Op.SEND_TF, Op.SEND_SF, Op.RECV_SB):
            return a.stage + 1
        return a.stage - 1

    # ---- actions -------------------------------------------------------------------------

    def _run_action(self, a: Action) -> None:
        key = (a.batch, a.microbatch, a.part)
        op = a.op
        if op == Op.RECV_TF:
            self._inbox[("TF", key)] = self.channels.recv("TF", self._peer(a), key[1:])
        elif op == Op.RECV_SF:
            self._inbox[("SF", key)] = self.channels.recv("SF", self._peer(a), key[1:])
        elif op == Op.RECV_SB:
            self._grads[key] = self.channels.recv("SB", self._peer(a), key[1:])
        elif op == Op.SEND_TF:
            self.channels.send("TF", self._peer(a), self._outbox.pop(("TF", key)))
        elif op == Op.SEND_SF:
            self.channels.send("SF", self._peer(a), self._outbox.pop(("SF", key)))
        elif op == Op.SEND_SB:
            self.channels.send("SB", self._peer(a), self._outbox.pop(("SB", key)))
        elif op == Op.TF:
            self._teacher_forward(a)
        elif op == Op.SF:
            self._student_forward(a)
        elif op == Op.LOSS:
            self._loss(a)
        elif op == Op.SB:
            self._student_backward(a)
        elif op == Op.OPT:
            self._step(a)
        else:  # pragma: no cover - every op is handled above
            raise ValueError(f"unknown op {op}")

    @torch.no_grad()
    def _teacher_forward(self, a: Action) -> None:
        teacher = self.teacher
        if self.task.teacher_rule.kind == "ema":
            want = max(0, a.batch - self.staleness)
            if want == self.teacher_version.version - 1 and self._previous_module is not None:
                teacher = self._previous_module  # a resumed tspipe run's first mini-batch
            else:
                self.teacher_version.check(a.batch, self.staleness, self.rank)
        key = (a.batch, a.microbatch, None)
        x = self._inputs(a.batch)[1][a.microbatch] if self.rank == 0 else self._inbox.pop(("TF", key))
        with self._autocast():
            y = teacher(x)
        if self.rank == self.last:
            self._teacher_out[(a.batch, a.microbatch)] = y
        else:
            self._outbox[("TF", key)] = y

    def _student_forward(self, a: Action) -> None:
        b, u = a.batch, a.microbatch
        if self.rank == 0:
            x = self._inputs(b)[0][u]
            pieces = scatter(x, self.pieces) if self.pieces > 1 else [x]
        else:
            x = self._inbox.pop(("SF", (b, u, None)))
            pieces = [detached_leaves(p) for p in (scatter(x, self.pieces) if self.pieces > 1 else [x])]
        outs = []
        for p, piece in enumerate(pieces):
            with self._autocast():
                out = self.student(piece)
            self._saved[(b, u, p if self.pieces > 1 else None)] = (piece, out)
            outs.append(out)
        if self.rank == self.last:
            self._piece_sizes[(b, u)] = [sizes(o) for o in outs]
            self._student_out[(b, u)] = detached_leaves(gather(outs) if len(outs) > 1 else outs[0])
        else:
            self._outbox[("SF", (b, u, None))] = map_structure(
                torch.Tensor.detach, gather(outs) if len(outs) > 1 else outs[0]
            )

    def _split_grad(self, b: int, u: int) -> None:
        """Gradient of the loss w.r.t. unit ``u``'s output, split into its backward pieces."""
        leaf = self._student_out.pop((b, u))

        def grad_of(t: torch.Tensor) -> torch.Tensor:
            return t.grad if t.grad is not None else torch.zeros_like(t)

        if isinstance(leaf, dict):
            keys = [k for k in sorted(leaf) if is_differentiable(leaf[k])]
            grad: Structure = {k: grad_of(leaf[k]) for k in keys}
            keep = [i for i, k in enumerate(sorted(leaf)) if k in grad]
        else:
            grad, keep = grad_of(leaf), [0]
        piece_sizes = [[s[i] for i in keep] for s in self._piece_sizes.pop((b, u))]
        if self.pieces == 1:
            self._grads[(b, u, None)] = grad
            return
        for p, g in enumerate(split_like(grad, piece_sizes)):
            self._grads[(b, u, p)] = g

    def _loss(self, a: Action) -> None:
        b = a.batch
        context = self.task.loss_context(self._batch(b), b)
        teacher = [
            upcast(
                gather([self._teacher_out[(b, m * self.views + v)] for m in range(self.config.microbatches)])
            )
            for v in range(self.views)
        ]
        if a.microbatch is None:
            student = [
                upcast(
                    gather(
                        [self._student_out[(b, m * self.views + v)] for m in range(self.config.microbatches)]
                    )
                )
                for v in range(self.views)
            ]
            out = self.task.loss(student, teacher, context)
            self._check_loss(out["loss"], b)
            out["loss"].backward()
            self._losses[b] = {k: float(v.detach()) for k, v in out.items()}
            for u in range(self.units):
                self._split_grad(b, u)
        else:
            u = a.microbatch
            m, v = divmod(u, self.views)
            term = self.task.microbatch_loss(
                v, m, self.config.microbatches, upcast(self._student_out[(b, u)]), teacher, context
            )
            self._check_loss(term, b)
            term.backward()
            acc = self._losses.setdefault(b, {"loss": 0.0})
            acc["loss"] += float(term.detach())
            self._split_grad(b, u)
        if a.microbatch is None or a.microbatch == self.units - 1:
            for u in range(self.units):
                self._teacher_out.pop((b, u), None)

    def _check_loss(self, loss: torch.Tensor, b: int) -> None:
        if self.config.nan_guard == "stop" and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(
                f"non-finite loss {float(loss.detach())} at step {b} on stage {self.rank}; stopped before "
                "the step (the last checkpoint is untouched; nan_guard=skip skips such steps instead)"
            )

    def _student_backward(self, a: Action) -> None:
        key = (a.batch, a.microbatch, a.part)
        piece, out = self._saved.pop(key)
        grad = self._grads.pop(key)
        if isinstance(out, dict):
            outs = [out[k] for k in sorted(grad)]
            grads = [grad[k] for k in sorted(grad)]
        else:
            outs, grads = [out], [grad]
        torch.autograd.backward(outs, grads)
        if self.rank > 0:
            if isinstance(piece, dict):
                self._outbox[("SB", key)] = {k: v.grad for k, v in piece.items() if v.grad is not None}
            else:
                self._outbox[("SB", key)] = piece.grad

    def _step(self, a: Action) -> None:
        b = a.batch
        guard = self.config.nan_guard
        params = [p for p in self.student.parameters() if p.grad is not None]
        bad = guard != "off" and not grads_finite(params)
        if bad and guard == "stop":
            raise FloatingPointError(
                f"non-finite gradient at step {b} on stage {self.rank}; stopped before the step "
                "(the last checkpoint is untouched; nan_guard=skip skips such steps instead)"
            )
        if guard == "skip" and self.stages > 1:
            flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:  # skip: no update of student, statistics or teacher; the step still counts
            self.optimizer.zero_grad(set_to_none=True)
            discard_statistics(self.student)
            self.skipped_steps += 1
            if self.task.teacher_rule.kind == "ema":
                self.teacher_version.version += 1
        else:
            if self.config.max_grad_norm is not None:
                clip_grad_norm_across_stages(
                    self.student.parameters(), self.config.max_grad_norm, self.device
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            commit_all(self.student)
            if self.task.teacher_rule.kind == "ema":
                if self.staleness and self.keep_previous_teacher(b):
                    self._previous_teacher = {
                        k: v.detach().clone() for k, v in self.teacher.state_dict().items()
                    }
                ema_update_(self.teacher, self.student, self.task.teacher_rule.momentum(b))
                self.teacher_version.version += 1
        if self._previous_module is not None and b >= self._resume_start:
            self._previous_module = None  # only the resumed run's first mini-batch needed it
        self._data.pop(b, None)
        self._unit_inputs.pop(b, None)

    # ---- the run -------------------------------------------------------------------------

    def run(
        self,
        batches: Iterable[Any],
        steps: int,
        on_step: Callable[[int, dict[str, float] | None], None] | None = None,
        start: int = 0,
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
        program = Program.build(
            self.config.schedule,
            self.stages,
            self.config.microbatches,
            self.task.teacher_rule.kind,
            steps,
            self.pieces,
            self.views,
            start,
        )
        validate(program.template)
        if self.task.teacher_rule.kind == "ema" and self.teacher_version.version != start:
            raise ValueError(
                f"the teacher has had {self.teacher_version.version} updates but the run starts at step "
                f"{start}; load the checkpoint of step {start} first"
            )
        if self.staleness and start > 0 and self.task.teacher_rule.kind == "ema":
            if self._previous_teacher is None:
                raise ValueError(
                    f"resuming {self.config.schedule} at step {start} needs the teacher of the step before "
                    "(stored in its checkpoints); this state has none"
                )
            self._previous_module = copy.deepcopy(self.teacher)
            self._previous_module.load_state_dict(self._previous_teacher)
        self._resume_start = start
        self._steps = start + steps
        self._iter: Iterator[Any] = iter(batches)
        self._fetched = start
        self._data: dict[int, Any] = {}
        self._unit_inputs: dict[int, tuple[list[Structure], list[Structure]]] = {}
        self._inbox: dict[tuple, Structure] = {}
        self._outbox: dict[tuple, Structure] = {}
        self._saved: dict[tuple, tuple[Structure, Structure]] = {}
        self._grads: dict[tuple, Structure] = {}
        self._student_out: dict[tuple, Structure] = {}
        self._teacher_out: dict[tuple, Structure] = {}
        self._piece_sizes: dict[tuple, list[list[int]]] = {}
        self._losses: dict[int, dict[str, float]] = {}
        log_ = StepLog()
        if self.stages > 1:
            dist.barrier()
        log_.t0_s = time.perf_counter()
        record = self.config.record_timeline
        sync = record and self.device.type == "cuda"
        for b in program.batches():
            segment = program.segment(self.rank, b)
            self._prepost(segment)
            for index, a in enumerate(segment):
                began = time.perf_counter()
                self._status.write(b, a)
                try:
                    self._run_action(a)
                except Exception as err:
                    grid = format_grid(program.grid(b), mark=(self.rank, index))
                    raise RuntimeError(
                        f"rank {self.rank} failed at action {a} of step {b}: {err}\n{grid}"
                    ) from err
                if record and a.is_compute:
                    if sync:
                        torch.cuda.synchronize(self.device)
                    end = time.perf_counter()
                    log_.records.append(
                        TimelineRecord.of(a, (began - log_.t0_s) * 1e3, (end - log_.t0_s) * 1e3)
                    )
            log_.step_end_s.append(time.perf_counter())
            losses = self._losses.pop(b, None)
            if losses is not None:
                log_.losses.append(losses)
            if on_step is not None:
                on_step(b, losses)
        if self.channels is not None:
            self.channels.drain()
        return log_

    def close(self) -> None:
        """Release the message groups."""
        if self.channels is not None:
            self.channels.close()
            self.channels = None

    # ---- weights and checkpoints ---------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything this stage needs to continue bit for bit: partitions (and, for a stale
        teacher, the version the next mini-batch reads), optimizer, scheduler, teacher version,
        skipped steps and random states. Tensors and plain containers only
        (``torch.load(weights_only=True)`` reads it)."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "previous_teacher": self._previous_teacher,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "teacher_version": self.teacher_version.version,
            "skipped_steps": self.skipped_steps,
            "rng": rng_state(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` (same schedule, stages and balance)."""
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self._previous_teacher = state["previous_teacher"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.teacher_version.version = state["teacher_version"]
        self.skipped_steps = state["skipped_steps"]
        set_rng_state(state["rng"])

    def stage_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """This stage's weights keyed by global block index: ``{"student": {"3.conv.weight": ...},
        "teacher": {...}}`` (CPU copies)."""

        def global_names(module: nn.Sequential, blocks: range) -> dict[str, torch.Tensor]:
            out = {}
            for name, value in module.state_dict().items():
                local, _, rest = name.partition(".")
                out[f"{blocks[int(local)]}.{rest}"] = value.detach().cpu().clone()
            return out

        return {
            "student": global_names(self.student, self.student_blocks),
            "teacher": global_names(self.teacher, self.teacher_blocks),
        }


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """True when every gradient is finite (one fused norm per parameter list)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def rng_state() -> dict[str, Any]:
    """This process's random states: Python, NumPy, torch CPU (and CUDA)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import random

    import numpy as np

    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class WholeModelState:
    """Checkpoint state of the runners that keep no stale teacher (ddp, the torch peer): their
    ``student``, ``teacher``, ``optimizer`` and ``scheduler`` attributes plus random states."""

    student: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    skipped_steps: int = 0

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "previous_teacher": None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "teacher_version": None,
            "skipped_steps": self.skipped_steps,
            "rng": rng_state(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = state["skipped_steps"]
        set_rng_state(state["rng"])


def guarded_update(
    runner: Any,
    step: int,
    loss: torch.Tensor | None,
    clip: Callable[[], Any] | None,
    agree: bool,
    distributed_bn: bool = False,
) -> bool:
    """The end of a step for the runners beside the pipeline runtime: NaN guard, clipping,
    optimizer and scheduler step, deferred BatchNorm commit, EMA update.

    Args:
        runner: has ``config``, ``student``, ``teacher``, ``optimizer``, ``scheduler``, ``task``,
            ``device``, ``skipped_steps``.
        step: the step index.
        loss: this rank's loss, if it has one.
        clip: clips the gradients (global norm), or None.
        agree: all-reduce the skip decision (ranks hold different gradients).
        distributed_bn: sum BatchNorm statistics over ranks before committing (ddp).

    Returns:
        True if the step was skipped.

    Raises:
        FloatingPointError: on a non-finite loss or gradient with ``nan_guard=stop``.
    """
    guard = runner.config.nan_guard
    bad = False
    if guard != "off":
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            bad = True
        bad = bad or not grads_finite(runner.student.parameters())
        if bad and guard == "stop":
            rank = dist.get_rank() if dist.is_initialized() else 0
            raise FloatingPointError(
                f"non-finite loss or gradient at step {step} on rank {rank}; stopped before the step "
                "(the last checkpoint is untouched; nan_guard=skip skips such steps instead)"
            )
        if guard == "skip" and agree and dist.is_initialized():
            flag = torch.tensor([1.0 if bad else 0.0], device=runner.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
    if bad:
        runner.optimizer.zero_grad(set_to_none=True)
        discard_statistics(runner.student)
        runner.skipped_steps += 1
        return True
    if clip is not None:
        clip()
    runner.optimizer.step()
    runner.optimizer.zero_grad(set_to_none=True)
    if runner.scheduler is not None:
        runner.scheduler.step()
    commit_all(runner.student, distributed=distributed_bn)
    if runner.task.teacher_rule.kind == "ema":
        ema_update_(runner.teacher, runner.student, runner.task.teacher_rule.momentum(step))
    return False


class _StatusFile:
    """One line per rank saying which step and action it is on, for the launcher's failure
    report (``TSPIPE_STATUS_DIR``, set by ``core.launch``); nothing without the variable."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    @classmethod
    def open(cls, rank: int) -> _StatusFile:
        folder = os.environ.get("TSPIPE_STATUS_DIR")
        if not folder:
            return cls(None)
        return cls(os.open(os.path.join(folder, f"rank{rank}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))

    def write(self, step: int, action: Action) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, f"step {step} action {action}".ljust(64).encode(), 0)


def gather_state(
    runtime_state: dict[str, dict[str, torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]] | None:
    """Merge every stage's :meth:`PipelineRuntime.stage_state` on rank 0.

    Returns:
        On rank 0, full ``{"student": state_dict, "teacher": state_dict}`` of ``nn.Sequential``
        models of all blocks; None on other ranks.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return runtime_state
    parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(runtime_state, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    merged: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    for part in parts:
        for kind in merged:
            merged[kind].update(part[kind])
    return merged
