"""The task interface a method supplies, and micro-batch scatter/gather of tensors and dicts.

A method describes *what* to train (blocks, loss, teacher rule, inputs); the engine decides
*where and when* each piece runs. Nothing here knows about schedules or processes.

Structures: an activation, input or output is a tensor or a dict of tensors, all sharing the
batch dimension 0 (token batches pass ``{"hidden": ..., "mask": ...}`` between blocks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from core.momentum import TeacherRule

Structure = Any  # torch.Tensor | dict[str, torch.Tensor]


# ---- structures --------------------------------------------------------------------------------


def tensors(x: Structure) -> list[torch.Tensor]:
    """The tensors of a structure, dict entries in key order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [x[k] for k in sorted(x)]
    raise TypeError(f"expected a tensor or a dict of tensors, got {type(x).__name__}")


def rebuild(like: Structure, values: Sequence[torch.Tensor]) -> Structure:
    """A structure shaped like ``like`` holding ``values`` (in :func:`tensors` order)."""
    if isinstance(like, torch.Tensor):
        return values[0]
    return dict(zip(sorted(like), values))


def map_structure(fn: Callable[[torch.Tensor], torch.Tensor], x: Structure) -> Structure:
    """Apply ``fn`` to every tensor of a structure."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    return {k: fn(v) for k, v in x.items()}


def batch_size(x: Structure) -> int:
    """Size of dimension 0 (every tensor of a structure shares it)."""
    return tensors(x)[0].shape[0]


def scatter(x: Structure, chunks: int) -> list[Structure]:
    """Split a structure along dimension 0 into ``chunks`` parts (sizes differ by at most one).

    Raises:
        ValueError: if the batch is smaller than ``chunks``.
    """
    n = batch_size(x)
    if n < chunks:
        raise ValueError(f"cannot split a batch of {n} samples into {chunks} micro-batches or pieces")
    if isinstance(x, torch.Tensor):
        return list(torch.tensor_split(x, chunks))
    parts = {k: torch.tensor_split(v, chunks) for k, v in x.items()}
    return [{k: parts[k][i] for k in x} for i in range(chunks)]


def gather(parts: Sequence[Structure]) -> Structure:
    """Concatenate structures along dimension 0 (inverse of :func:`scatter`)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    return {k: torch.cat([p[k] for p in parts]) for k in first}


def sizes(x: Structure) -> list[int]:
    """Dimension-0 size of each tensor of a structure (dict entries may differ, e.g. logits at
    masked positions only)."""
    return [t.shape[0] for t in tensors(x)]


def split_like(x: Structure, parts_sizes: Sequence[Sequence[int]]) -> list[Structure]:
    """Split each tensor of ``x`` along dimension 0 by the per-part sizes recorded with :func:`sizes`."""
    columns = [torch.split(t, [s[i] for s in parts_sizes]) for i, t in enumerate(tensors(x))]
    return [rebuild(x, [col[j] for col in columns]) for j in range(len(parts_sizes))]


def is_differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def upcast(x: Structure) -> Structure:
    """Half-precision tensors of a structure in float32 (losses run in full precision under
    autocast); everything else unchanged."""
    return map_structure(lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t, x)


def detached_leaves(x: Structure) -> Structure:
    """A copy of ``x`` cut from its graph, floating tensors requiring grad (new leaves)."""
    return map_structure(lambda t: t.detach().requires_grad_(is_differentiable(t)), x)


# ---- the task ----------------------------------------------------------------------------------


class Task(ABC):
    """What a method supplies to the engine.

    Attributes:
        views: views per sample; each view of each micro-batch is one pipeline unit (BYOL and
            MoCo-v3: 2, KD: 1).
        predictor_blocks: trailing student blocks the teacher lacks (a predictor); an EMA
            teacher mirrors the other student blocks one to one.
        teacher_rule: ``TeacherRule.frozen()`` or an EMA rule with its momentum schedule.
    """

    views: int = 1
    predictor_blocks: int = 0
    teacher_rule: TeacherRule = TeacherRule.frozen()

    @abstractmethod
    def build_student(self) -> list[nn.Module]:
        """The student as blocks, predictor blocks last. Called once per process with the same
        seed, so every process builds identical weights."""

    @abstractmethod
    def build_teacher(self, student: Sequence[nn.Module]) -> list[nn.Module]:
        """The teacher as blocks. An EMA teacher is a copy of the student's non-predictor
        blocks (same structure, same boundaries); a frozen teacher is any model."""

    @abstractmethod
    def split_inputs(self, batch: Any, step: int) -> tuple[list[Structure], list[Structure]]:
        """Turn a data batch into per-view inputs of the whole mini-batch.

        Returns:
            ``(student_inputs, teacher_inputs)``, each a list with one structure per view.
        """

    def loss_context(self, batch: Any, step: int) -> Any:
        """What the loss needs from the batch besides the outputs (labels, masks); None by default.
        Runs on the last stage, which computes the loss."""
        return None

    @abstractmethod
    def loss(
        self, student: list[Structure], teacher: list[Structure], context: Any
    ) -> dict[str, torch.Tensor]:
        """Loss over the whole mini-batch.

        Args:
            student: student outputs per view, micro-batches concatenated in order.
            teacher: teacher outputs per view.
            context: :meth:`loss_context` of the batch.

        Returns:
            A dict with a scalar ``"loss"`` to minimise, plus anything to log.
        """

    def microbatch_loss(
        self,
        view: int,
        microbatch: int,
        microbatches: int,
        student: Structure,
        teacher: list[Structure],
        context: Any,
    ) -> torch.Tensor:
        """The loss terms of one unit, for schedules that compute the loss per micro-batch
        (``1f1b``, the torch pipelining peer). Summed over all units it must equal ``loss``.

        Args:
            view: the unit's view.
            microbatch: the unit's micro-batch; its samples are
                ``unit_slices(batch, microbatches)[microbatch]`` of the mini-batch.
            microbatches: micro-batches per mini-batch.
            student: the unit's student output.
            teacher: teacher outputs of the whole mini-batch, per view.
            context: :meth:`loss_context` of the batch.

        Raises:
            NotImplementedError: if the loss does not decompose over micro-batches.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no per-micro-batch loss; use gpipe or tspipe, which compute "
            "the loss over the whole mini-batch"
        )

    def block_costs(self) -> tuple[list[float], list[float]] | None:
        """Relative per-block costs for balancing a frozen teacher against the student's stages
        without timing anything: ``(student forward + backward per block, teacher forward per
        block)`` in any one unit; None (the default) when the task has no estimate."""
        return None

    @property
    def has_microbatch_loss(self) -> bool:
        """True when :meth:`microbatch_loss` is overridden."""
        return type(self).microbatch_loss is not Task.microbatch_loss


def unit_slices(batch: int, microbatches: int) -> list[slice]:
    """Sample slices of each micro-batch under :func:`scatter` (sizes differ by at most one)."""
    bounds = [0]
    base, extra = divmod(batch, microbatches)
    for m in range(microbatches):
        bounds.append(bounds[-1] + base + (1 if m < extra else 0))
    return [slice(bounds[m], bounds[m + 1]) for m in range(microbatches)]
