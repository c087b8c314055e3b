"""One pipeline stage's compute: its student and teacher partitions, the data it reads, one
store of activations keyed by action, and the forward, loss and backward of one unit.

Store kinds, each keyed by ``(batch, unit, piece)``: ``in:TF`` / ``in:SF`` (activations
received from the previous stage), ``out:TF`` / ``out:SF`` / ``out:SB`` (results waiting for
their send), ``saved`` (a piece's input and output, kept for its backward), ``grad`` (the
gradient of a piece's output: received, or split from the loss on the last stage), and on
the last stage ``student`` / ``teacher`` (unit outputs gathered for the loss) and ``sizes``;
with a split backward, ``weights`` (what a piece's weight half needs, from its input half).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

from core.action import Action
from core.config import PipelineConfig
from core.runtime.replicas import Replicas
from core.schedules import get_schedule
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


class Stage:
    """The compute of one stage.

    Args:
        task: what to train.
        config: the pipeline part of the run.
        student, teacher: this stage's partitions (on ``device``).
        rank: the stage index (0: reads the inputs; last: computes the loss).
        device: where the partitions live.
        replicas: the data-parallel replicas of this stage (default: none); stage 0 reads its
            replica's slice of each mini-batch, the last stage computes the loss of the whole.
    """

    def __init__(
        self,
        task: Task,
        config: PipelineConfig,
        student: nn.Module,
        teacher: nn.Module,
        rank: int,
        device: torch.device,
        replicas: Replicas | None = None,
    ) -> None:
        self.task, self.config = task, config
        self.replicas = replicas or Replicas()
        self.student, self.teacher = student, teacher
        # what runs the forwards: the partitions, or their compiled forms (core.runtime.compiled)
        self.student_fn: Callable[..., Any] = student
        self.teacher_fn: Callable[..., Any] = teacher
        self.rank, self.device = rank, device
        self.first, self.last = rank == 0, rank == config.stages - 1
        self.views = task.views
        self.units = config.microbatches * task.views
        self.pieces = config.pieces
        # stage 0 sends no input gradient: its SB is the whole backward and its SW is empty
        self.split = get_schedule(config.schedule).split_backward and not self.first
        self.store: dict[tuple, Any] = {}
        self.losses: dict[int, dict[str, float]] = {}

    # ---- data -----------------------------------------------------------------------------

    def begin(self, batches: Iterable[Any], start: int, steps: int) -> None:
        """Read mini-batches ``start, start + 1, ...`` from ``batches`` as the actions need them."""
        self.store.clear()
        self.losses.clear()
        self._iter: Iterator[Any] = iter(batches)
        self._fetched, self._end = start, start + steps
        self._data: dict[int, Any] = {}
        self._unit_inputs: dict[int, tuple[list[Structure], list[Structure]]] = {}

    def batch(self, b: int) -> Any:
        """The data batch of mini-batch ``b``."""
        while self._fetched <= b:
            try:
                self._data[self._fetched] = next(self._iter)
            except StopIteration:
                raise RuntimeError(
                    f"the data ran out at batch {self._fetched}; the run needs {self._end}"
                ) from None
            self._fetched += 1
        return self._data[b]

    def inputs(self, b: int) -> tuple[list[Structure], list[Structure]]:
        """Student and teacher inputs of batch ``b``, one per unit (stage 0 only)."""
        if b not in self._unit_inputs:
            s_views, t_views = self.task.split_inputs(self.batch(b), b)
            if len(s_views) != self.views or len(t_views) != self.views:
                raise ValueError(
                    f"split_inputs returned {len(s_views)}/{len(t_views)} views, task declares {self.views}"
                )
            m = self.config.microbatches
            s_parts = [scatter(self._to_device(self.replicas.part(v, m)), m) for v in s_views]
            t_parts = [scatter(self._to_device(self.replicas.part(v, m)), m) for v in t_views]
            self._unit_inputs[b] = (
                [s_parts[u % self.views][u // self.views] for u in range(self.units)],
                [t_parts[u % self.views][u // self.views] for u in range(self.units)],
            )
        return self._unit_inputs[b]

    def finish(self, b: int) -> None:
        """Drop what mini-batch ``b`` kept once its step is done."""
        self._data.pop(b, None)
        self._unit_inputs.pop(b, None)

    def _to_device(self, x: Structure) -> Structure:
        return map_structure(lambda t: t.to(self.device, non_blocking=True), x)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp_bf16)

    # ---- compute --------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_forward(self, a: Action, teacher: nn.Module) -> None:
        """Teacher forward of unit ``a.microbatch`` with ``teacher`` (the version it reads)."""
        key = (a.batch, a.microbatch, None)
        x = self.inputs(a.batch)[1][a.microbatch] if self.first else self.store.pop(("in:TF", *key))
        with self._autocast():
            y = (self.teacher_fn if teacher is self.teacher else teacher)(x)
        self.store[("teacher" if self.last else "out:TF", *key)] = y

    def student_forward(self, a: Action) -> None:
        """Student forward of a unit, piece by piece; each piece's graph is kept for its backward."""
        b, u = a.batch, a.microbatch
        if self.first:
            x = self.inputs(b)[0][u]
            pieces = scatter(x, self.pieces) if self.pieces > 1 else [x]
        else:
            x = self.store.pop(("in:SF", b, u, None))
            pieces = [detached_leaves(p) for p in (scatter(x, self.pieces) if self.pieces > 1 else [x])]
        outs = []
        for p, piece in enumerate(pieces):
            with self._autocast():
                out = self.student_fn(piece)
            self.store[("saved", b, u, p if self.pieces > 1 else None)] = (piece, out)
            outs.append(out)
        whole = gather(outs) if len(outs) > 1 else outs[0]
        if self.last:
            self.store[("sizes", b, u, None)] = [sizes(o) for o in outs]
            self.store[("student", b, u, None)] = detached_leaves(whole)
        else:
            self.store[("out:SF", b, u, None)] = map_structure(torch.Tensor.detach, whole)

    def _unit_outputs(self, kind: str, b: int, view: int) -> Structure:
        m = self.config.microbatches
        return upcast(gather([self.store[(kind, b, k * self.views + view, None)] for k in range(m)]))

    def _teacher_outputs(self, b: int) -> list[Structure]:
        """The teacher's outputs of mini-batch ``b`` per view (every replica's, with dp)."""
        key = ("teachers", b, None, None)
        if key not in self.store:
            self.store[key] = [
                self.replicas.gather(self._unit_outputs("teacher", b, v), with_grad=False)
                for v in range(self.views)
            ]
        return self.store[key]

    def loss(self, a: Action) -> None:
        """Last stage: the loss of the whole mini-batch (``a.microbatch`` None) or of one unit,
        and the gradients of the unit outputs it covers, split into backward pieces. With dp
        replicas the whole mini-batch is every replica's, and a unit is numbered as one of a
        pipeline with ``dp x M`` micro-batches."""
        b = a.batch
        context = self.task.loss_context(self.batch(b), b)
        teacher = self._teacher_outputs(b)
        if a.microbatch is None:
            student = [
                self.replicas.gather(self._unit_outputs("student", b, v), with_grad=True)
                for v in range(self.views)
            ]
            out = self.task.loss(student, teacher, context)
            self._check_loss(out["loss"], b)
            out["loss"].backward()
            self.losses[b] = {k: float(v.detach()) for k, v in out.items()}
            for u in range(self.units):
                self._split_grad(b, u)
        else:
            u = a.microbatch
            m, v = divmod(u, self.views)
            micro, dp = self.config.microbatches, self.replicas.size
            student = upcast(self.store[("student", b, u, None)])
            term = self.task.microbatch_loss(
                v, self.replicas.index * micro + m, dp * micro, student, teacher, context
            )
            self._check_loss(term, b)
            term.backward()
            acc = self.losses.setdefault(b, {"loss": 0.0})
            acc["loss"] += float(term.detach())
            self._split_grad(b, u)
            if u == self.units - 1 and dp > 1:  # the loss of the whole mini-batch
                total = torch.tensor([acc["loss"]], dtype=torch.float64, device=self.device)
                self.replicas.sum_(total)
                acc["loss"] = float(total)
        if a.microbatch is None or a.microbatch == self.units - 1:
            self.store.pop(("teachers", b, None, None), None)
            for u in range(self.units):
                self.store.pop(("teacher", b, u, None), None)

    def _check_loss(self, loss: torch.Tensor, b: int) -> None:
        if self.config.nan_guard == "stop" and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(
                f"non-finite loss {float(loss.detach())} at step {b} on stage {self.rank}; stopped before "
                "the step (the last checkpoint is untouched; nan_guard=skip skips such steps instead)"
            )

    def _split_grad(self, b: int, u: int) -> None:
        """Gradient of the loss w.r.t. unit ``u``'s output, split into its backward pieces."""
        leaf = self.store.pop(("student", b, u, None))

        def grad_of(t: torch.Tensor) -> torch.Tensor:
            return t.grad if t.grad is not None else torch.zeros_like(t)

        if isinstance(leaf, dict):
            keys = [k for k in sorted(leaf) if is_differentiable(leaf[k])]
            grad: Structure = {k: grad_of(leaf[k]) for k in keys}
            keep = [i for i, k in enumerate(sorted(leaf)) if k in grad]
        else:
            grad, keep = grad_of(leaf), [0]
        piece_sizes = [[s[i] for i in keep] for s in self.store.pop(("sizes", b, u, None))]
        if self.pieces == 1:
            self.store[("grad", b, u, None)] = grad
            return
        for p, g in enumerate(split_like(grad, piece_sizes)):
            self.store[("grad", b, u, p)] = g

    def backward(self, a: Action) -> None:
        """Backward of one piece from its output gradient; stages after the first keep the
        gradient of their input for the send. With a split backward (stages after the first)
        only the input's gradient: the graph is kept, with the gradients the weight half will
        start from (``torch.distributed.pipelining``'s ``stage_backward_input``)."""
        key = (a.batch, a.microbatch, a.part)
        piece, out = self.store.pop(("saved", *key))
        grad = self.store.pop(("grad", *key))
        if isinstance(out, dict):
            outs = [out[k] for k in sorted(grad)]
            grads = [grad[k] for k in sorted(grad)]
        else:
            outs, grads = [out], [grad]
        if self.split:
            inputs = [piece[k] for k in sorted(piece)] if isinstance(piece, dict) else [piece]
            _, groups = stage_backward_input(outs, grads, inputs, self.student.parameters())
            self.store[("weights", *key)] = groups
        else:
            torch.autograd.backward(outs, grads)
        if not self.first:
            if isinstance(piece, dict):
                self.store[("out:SB", *key)] = {k: v.grad for k, v in piece.items() if v.grad is not None}
            else:
                self.store[("out:SB", *key)] = piece.grad

    def weight_backward(self, a: Action) -> None:
        """Weight half of a split backward: the weights' gradients of one piece, accumulated
        into ``.grad`` from what its input half kept; nothing on stage 0, whose input half was
        the whole backward."""
        groups = self.store.pop(("weights", a.batch, a.microbatch, a.part), None)
        if groups is not None:
            stage_backward_weight(self.student.parameters(), groups)
