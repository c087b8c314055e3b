"""What a split backward's halves cost while other units' weight halves wait, stage by stage.

A schedule that defers weight halves (``SW``) keeps each unit's graph until its weight half runs.
On CPU that is not free: with the graphs held, the input halves (``SB``) cannot reuse the memory
a weight half would have freed, so they allocate afresh, and the memory freed at the end goes
back to the system and is faulted in again next step (glibc's allocator). Timed on one process,
the last stage of the synthetic pair (8 units) ran its input halves 1.5x slower with its weight
halves deferred; the soft-target pair not at all. Block-by-block profiles miss part of it (the
cost grows with all the graphs a stage holds), so this times each stage whole, at the run's
partition, in the two orders a schedule can run a stage's split backwards:

* now: every unit's weight half right after its input half;
* deferred: every input half, then every weight half (what ``tspipe-zb`` does on the last stage).

Forwards run first in both, so both hold the same forward graphs. The factors compare the halves
that run while another unit's weight half waits in the deferred order (every input half but the
first, every weight half but the last) with the same halves run now; the simulator charges them
to each half that runs while another unit's weight half waits on its stage
(``core.simulate.waiting_halves``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

from core.partition import stage_modules
from core.runtime import prepare_models
from core.stage_timing import batch_units
from core.task import Task, detached_leaves, tensors


def _halves(stage: nn.Module, inputs: Sequence[Any], deferred: bool, sync) -> tuple[float, float]:
    """Milliseconds of the input halves after the first and the weight halves before the last,
    over ``inputs`` (one unit each), in one order."""
    params = list(stage.parameters())
    held = []
    for x in inputs:
        leaf = detached_leaves(x)
        out = stage(leaf)
        held.append(
            ([t for t in tensors(out) if t.requires_grad], [t for t in tensors(leaf) if t.requires_grad])
        )
    sync()
    b_ms = w_ms = 0.0
    groups = []
    last = len(held) - 1
    for k, (outs, wrt) in enumerate(held):
        start = time.perf_counter()
        _, group = stage_backward_input(outs, [torch.ones_like(t) for t in outs], wrt, iter(params))
        sync()
        b_ms += (time.perf_counter() - start) * 1e3 if k > 0 else 0.0
        if deferred:
            groups.append(group)
            continue
        start = time.perf_counter()
        stage_backward_weight(iter(params), group)
        sync()
        w_ms += (time.perf_counter() - start) * 1e3 if k < last else 0.0
    for k, group in enumerate(groups):
        start = time.perf_counter()
        stage_backward_weight(iter(params), group)
        sync()
        w_ms += (time.perf_counter() - start) * 1e3 if k < last else 0.0
    stage.zero_grad(set_to_none=True)
    return b_ms, w_ms


def deferral_factors(
    task: Task,
    batch: Any,
    microbatches: int,
    balance: Sequence[int],
    device: torch.device,
    repeats: int = 3,
) -> list[tuple[float, float]]:
    """Per stage, (input half, weight half) cost while other weight halves wait over their cost
    run now, for the units of one mini-batch of ``batch`` at ``microbatches`` micro-batches
    under the student partition ``balance``; (1, 1) for stage 0 (its backward is one input
    half) and for a mini-batch of one unit (nothing can wait). The two orders alternate, one
    untimed round first; each factor is the median over ``repeats`` rounds.
    """
    student = [b.to(device) for b in prepare_models(task)[0]]
    stages = [stage_modules(student, balance, s) for s in range(len(balance))]
    units, _ = batch_units(task, batch, microbatches, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    factors = [(1.0, 1.0)]
    inputs = units
    for before, stage in zip(stages, stages[1:]) if len(units) > 1 else []:
        with torch.no_grad():
            inputs = [before(x) for x in inputs]
        b_ratio, w_ratio = [], []
        for k in range(repeats + 1):
            now = _halves(stage, inputs, False, sync)
            later = _halves(stage, inputs, True, sync)
            if k:
                b_ratio.append(later[0] / now[0] if now[0] > 0 else 1.0)
                w_ratio.append(later[1] / now[1] if now[1] > 0 else 1.0)
        factors.append((statistics.median(b_ratio), statistics.median(w_ratio)))
    return factors + [(1.0, 1.0)] * (len(stages) - len(factors))
