"""Deferred BatchNorm: micro-batch statistics for normalising, one full-batch running update.

A pipeline runs a mini-batch as micro-batches, so a plain BatchNorm would update its running
statistics once per micro-batch, with micro-batch statistics. :class:`DeferredBatchNorm`
normalises with the statistics of the micro-batch it sees (as BatchNorm in training does) but
only accumulates sums; :func:`commit` then updates the running statistics once, exactly as a
BatchNorm seeing the whole mini-batch would (torchgpipe calls this deferred batch norm).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DeferredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over any number of dimensions whose running statistics move once per mini-batch.

    Attributes:
        accumulate: when False (an EMA teacher), training-mode forwards normalise with batch
            statistics but record nothing; the running statistics come from elsewhere.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.accumulate = True
        self.register_buffer("_sum", torch.zeros(num_features, dtype=torch.float64), persistent=False)
        self.register_buffer("_sumsq", torch.zeros(num_features, dtype=torch.float64), persistent=False)
        # one element, not a 0-dim tensor: torch 2.11's compiled forwards (aot_eager, inductor)
        # drop in-place updates of 0-dim buffers, which left the count at 0 and the running
        # statistics unmoved
        self.register_buffer("_count", torch.zeros(1, dtype=torch.float64), persistent=False)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if self.accumulate:
            with torch.no_grad():
                # one pass in the input's precision, accumulated in float64 across micro-batches
                var, mean = torch.var_mean(x.detach(), dim=[0, *range(2, x.dim())], correction=0)
                n = x.numel() / x.shape[1]
                mean = mean.to(torch.float64)
                self._sum.add_(mean, alpha=n)
                self._sumsq.add_((var.to(torch.float64) + mean * mean) * n)
                self._count.add_(n)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    @torch.no_grad()
    def commit(self, group: dist.ProcessGroup | None = None, distributed: bool = False) -> None:
        """Fold the accumulated statistics into the running ones, as one full-batch BatchNorm
        step, and reset the sums. With ``distributed``, the sums are first added up over the
        process group (data parallelism: the full batch spans the ranks)."""
        if distributed:
            stats = torch.cat([self._sum, self._sumsq, self._count])
            dist.all_reduce(stats, group=group)
            n = self._sum.numel()
            self._sum.copy_(stats[:n])
            self._sumsq.copy_(stats[n : 2 * n])
            self._count.copy_(stats[2 * n :])
        count = float(self._count)
        if count == 0:
            return
        mean = self._sum / count
        var = (self._sumsq / count - mean * mean).clamp_min(0.0)
        unbiased = var * count / max(count - 1.0, 1.0)
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        self._sum.zero_()
        self._sumsq.zero_()
        self._count.zero_()


def convert_deferred(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place, recursively) by a
    :class:`DeferredBatchNorm` with the same parameters and statistics.

    Returns:
        ``module`` (or the replacement, if ``module`` itself is a BatchNorm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DeferredBatchNorm):
        new = DeferredBatchNorm(module.num_features, module.eps, module.momentum, module.affine)
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
            if module.running_mean is not None:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        new.to(next((t.device for t in module.buffers()), torch.device("cpu")))
        return new
    for name, child in module.named_children():
        replaced = convert_deferred(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def deferred_layers(module: nn.Module) -> list[DeferredBatchNorm]:
    """Every :class:`DeferredBatchNorm` inside ``module``."""
    return [m for m in module.modules() if isinstance(m, DeferredBatchNorm)]


def set_accumulate(module: nn.Module, accumulate: bool) -> None:
    """Turn statistics accumulation of every deferred BatchNorm in ``module`` on or off."""
    for layer in deferred_layers(module):
        layer.accumulate = accumulate


def discard_statistics(module: nn.Module) -> None:
    """Drop the statistics every deferred BatchNorm of ``module`` accumulated (a skipped step)."""
    for layer in deferred_layers(module):
        layer._sum.zero_()
        layer._sumsq.zero_()
        layer._count.zero_()


def commit_all(module: nn.Module, group: dist.ProcessGroup | None = None, distributed: bool = False) -> None:
    """:meth:`DeferredBatchNorm.commit` on every deferred BatchNorm of ``module``."""
    for layer in deferred_layers(module):
        layer.commit(group, distributed)
