"""Data-parallel replicas of a pipeline (dp x pp): the ``("dp", "pp")`` device mesh, and what
one stage does across the replicas of its stage.

``dp x stages`` ranks form a ``DeviceMesh`` of shape ``(dp, stages)``, row-major: rank
``d * stages + p`` is stage ``p`` of replica ``d``. A pipeline's stages are therefore
consecutive ranks: under ``torchrun --nproc-per-node K`` with ``K`` a multiple of the stage
count, every pipeline lies on one node and only the dp all-reduces cross nodes (the placement
rule). Each replica runs the schedule over its own pipeline on its 1/dp of every mini-batch
(split before the micro-batches, so replica d's micro-batch m is micro-batch ``d * M + m`` of
one pipeline with ``dp * M`` micro-batches). At the loss, the last stages gather the student
(with its graph) and teacher outputs over dp, so every replica computes the loss of the whole
mini-batch (MoCo-v3's negatives and BYOL's mean are global, as in ddp) and keeps the gradient
of its own slice. Once a stage's backwards of a step are done, its student gradients are summed
over its dp group (in buckets), before the NaN guard, the clip and the optimizer: replicas
then hold equal gradients, take equal steps and keep equal EMA teachers. Deferred BatchNorm
statistics are summed over the stage's dp group at commit: the statistics of the whole
mini-batch, as one pipeline with ``dp * M`` micro-batches would commit them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from core.task import Structure, batch_size, rebuild, scatter, tensors

BUCKET_BYTES = 25 * 2**20  # gradients are all-reduced in buckets of about this size


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dimension 0 over ``group`` (sizes may differ per rank). The backward
    returns this rank's slice of the gradient: summed over the group first (``reduce``: each
    rank's loss saw the gathered tensor, as in ddp), or as it is (every rank computed the same
    loss of the same gathered tensor, so its own slice is already the whole gradient)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, counts: list[int], index: int, group: Any, reduce: bool
    ) -> torch.Tensor:
        ctx.counts, ctx.index, ctx.group, ctx.reduce = counts, index, group, reduce
        return _plain_gather(x, counts, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.contiguous()
        if ctx.reduce:
            dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[: ctx.index])
        return grad[start : start + ctx.counts[ctx.index]], None, None, None, None


def all_gather_structure(
    x: Structure, with_grad: bool, group: Any = None, reduce_grad: bool = True
) -> Structure:
    """Concatenate a structure over the ranks of ``group`` (default: all) along dimension 0, in
    rank order; tensors that need a gradient keep their graph when ``with_grad``."""
    index, world = dist.get_rank(group), dist.get_world_size(group)
    out = []
    for t in tensors(x):
        count = torch.tensor([t.shape[0]], device=t.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        sizes = [int(c) for c in counts]
        if with_grad and t.requires_grad:
            out.append(_GatherWithGrad.apply(t, sizes, index, group, reduce_grad))
        else:
            out.append(_plain_gather(t.detach(), sizes, group))
    return rebuild(x, out)


def _plain_gather(x: torch.Tensor, counts: list[int], group: Any = None) -> torch.Tensor:
    """All-gather along dimension 0 with per-rank sizes ``counts`` (padded to the largest)."""
    biggest = max(counts)
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


@dataclass
class Replicas:
    """One stage's view of the dp dimension: how many replicas, which one this is, and the
    group of the same stage in every replica. ``Replicas()`` is the single pipeline, for which
    every method is the identity.

    Attributes:
        size: replicas (dp).
        index: this replica (its coordinate on ``dp``).
        group: the process group of this stage over the replicas (None when size is 1).
        pipelines: global ranks of every replica's stages, ``pipelines[d][p]``.
        pp_group: the process group of this replica's stages (None when size is 1).
    """

    size: int = 1
    index: int = 0
    group: Any = None
    pipelines: list[list[int]] = field(default_factory=list)
    pp_group: Any = None

    def part(self, x: Structure, microbatches: int) -> Structure:
        """This replica's slice of a whole mini-batch's view.

        Raises:
            ValueError: unless the batch divides into dp x microbatches equal parts (needed for
                the micro-batches to be those of one pipeline with dp x M micro-batches).
        """
        if self.size == 1:
            return x
        n = batch_size(x)
        if n % (self.size * microbatches):
            raise ValueError(
                f"dp={self.size} with {microbatches} micro-batches needs a mini-batch divisible by "
                f"{self.size * microbatches}, got {n} samples"
            )
        return scatter(x, self.size)[self.index]

    def gather(self, x: Structure, with_grad: bool) -> Structure:
        """The whole mini-batch's outputs from every replica's slice (identity for one)."""
        if self.size == 1:
            return x
        return all_gather_structure(x, with_grad, self.group, reduce_grad=False)

    def close(self) -> None:
        """Destroy the mesh's two groups (each holds communication threads until destroyed);
        the job's default group, should the mesh have reused it, stays."""
        for group in {id(g): g for g in (self.group, self.pp_group) if g is not None}.values():
            if group is not dist.group.WORLD:
                dist.destroy_process_group(group)
        self.group = self.pp_group = None

    def sum_(self, t: torch.Tensor) -> None:
        """Sum a tensor over the replicas in place."""
        if self.size > 1:
            dist.all_reduce(t, group=self.group)

    def start_reduce(self, params: Iterable[nn.Parameter]) -> PendingReduce | None:
        """Start summing the student's gradients over the replicas (asynchronous all-reduces in
        buckets of about :data:`BUCKET_BYTES` per dtype and device); None for one replica. The
        gradients must not change until :meth:`PendingReduce.finish`."""
        if self.size == 1:
            return None
        work = []
        for bucket in _buckets([p.grad for p in params if p.grad is not None]):
            flat = _flatten_dense_tensors(bucket)
            work.append((dist.all_reduce(flat, group=self.group, async_op=True), flat, bucket))
        return PendingReduce(work)

    def reduce_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Sum the student's gradients over the replicas now (:meth:`start_reduce`, finished)."""
        pending = self.start_reduce(params)
        if pending is not None:
            pending.finish()


@dataclass
class PendingReduce:
    """Gradient all-reduces in flight: (handle, flat bucket, the bucket's gradients) each."""

    work: list[tuple[Any, torch.Tensor, list[torch.Tensor]]]

    def finish(self) -> None:
        """Wait for every bucket and write the sums back into the gradients."""
        for handle, flat, bucket in self.work:
            handle.wait()
            for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(reduced)
        self.work = []


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gradients grouped by dtype and device, in order, into runs of about :data:`BUCKET_BYTES`
    (a run closes once it holds that many bytes)."""
    runs: dict[tuple, list[list[torch.Tensor]]] = {}
    filled: dict[tuple, int] = {}
    for g in grads:
        key = (g.dtype, g.device)
        if key not in runs or filled[key] >= BUCKET_BYTES:
            runs.setdefault(key, []).append([])
            filled[key] = 0
        runs[key][-1].append(g)
        filled[key] += g.numel() * g.element_size()
    return [bucket for by_key in runs.values() for bucket in by_key]


def make_replicas(dp: int, stages: int, device: torch.device) -> Replicas:
    """The ``(dp, pp)`` mesh over every rank of the job, as this rank sees it.

    Raises:
        ValueError: if the job's world size is not ``dp * stages``.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world != dp * stages:
        raise ValueError(f"dp={dp} x {stages} stages needs {dp * stages} processes, got {world}")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dp, stages), mesh_dim_names=("dp", "pp"))
    return Replicas(
        size=dp,
        index=mesh.get_local_rank("dp"),
        group=mesh.get_group("dp"),
        pipelines=[list(map(int, row)) for row in mesh.mesh.tolist()],
        pp_group=mesh.get_group("pp"),
    )
