"""The engine's runners: one rank of a run, whatever runs it.

- ``runner``: the :class:`Runner` protocol, :class:`StepLog` and :func:`make_runner`.
- ``pipeline``: the pipeline runner (one stage per rank), composed of ``stage`` (partitions,
  activation store, compute of one unit), ``interpreter`` (op -> handler, recording, the error
  grid), ``transport`` (torch.distributed, or in process), ``step`` (guard, clipping, optimizer,
  BatchNorm commit, EMA) and ``versions`` (teacher versions, the stale snapshot).
- ``ddp`` and ``torchpipe``: data parallelism and PyTorch's own pipelining, on the same end of
  step and state; ``replicas``: data-parallel replicas of a pipeline (dp x pp).
- ``models`` (prepared models, balances, partitions) and ``state`` (checkpoints, weights).
"""

from core.runtime.models import prepare_models, resolve_balances
from core.runtime.runner import OptimizerFactory, Runner, SchedulerFactory, StepLog, make_runner
from core.runtime.state import gather_state, merge_states, rng_state, set_rng_state
from core.runtime.step import clip_grad_norm_across_stages, grads_finite
from core.runtime.transport import LocalNetwork, LocalTransport, Solo, TorchTransport, Transport

__all__ = [
    "LocalNetwork",
    "LocalTransport",
    "OptimizerFactory",
    "Runner",
    "SchedulerFactory",
    "Solo",
    "StepLog",
    "TorchTransport",
    "Transport",
    "clip_grad_norm_across_stages",
    "gather_state",
    "grads_finite",
    "make_runner",
    "merge_states",
    "prepare_models",
    "resolve_balances",
    "rng_state",
    "set_rng_state",
]
