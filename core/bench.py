"""Throughput measurement: per-block cost profiles, timed runs on every rank, and predictions.

A benchmark is a driver that launches one timed run per schedule (``core.launch``), each rank
calling :func:`timed_run`; the driver then combines the ranks' step times into samples/s
(median step after warm-up, all ranks finished), and compares them with the bubble-free bound
and the simulator's prediction, both built from per-block costs profiled in the same run
(:func:`profile_blocks`).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.config import PipelineConfig
from core.momentum import ema_update_
from core.partition import Partition
from core.runtime import prepare_models
from core.schedules import build_schedule, get_schedule
from core.simulate import CostModel, Link, ddp_step, simulate, stage_cost_model
from core.task import Structure, Task, detached_leaves, map_structure, scatter, tensors


@dataclass
class BlockCosts:
    """Measured per-block costs of a task at one unit size (milliseconds per unit).

    Attributes:
        samples: samples in the unit the costs were measured at.
        teacher_fwd, student_fwd, student_bwd: per block.
        teacher_bytes, student_bytes: bytes of each block's output for one unit.
        loss_ms: the loss over the whole mini-batch (every unit).
        opt_ms: optimizer step plus teacher update per block, proportional to parameters.
        param_bytes: bytes of each student block's parameters (what ddp all-reduces).
    """

    samples: int
    teacher_fwd: list[float]
    student_fwd: list[float]
    student_bwd: list[float]
    teacher_bytes: list[float]
    student_bytes: list[float]
    loss_ms: float
    opt_ms: list[float]
    param_bytes: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def _nbytes(x: Structure) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors(x)))


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profile_blocks(
    task: Task,
    batch: Any,
    microbatches: int,
    optimizer_factory: Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer],
    device: torch.device,
    repeats: int = 5,
    amp_bf16: bool = False,
) -> BlockCosts:
    """Time each block of student and teacher on one unit of ``batch`` (first view, first
    micro-batch): forward, and backward of the student from a random output gradient. Also the
    loss over the whole batch, and the optimizer step and teacher update spread over blocks by
    parameter count.

    Returns:
        :class:`BlockCosts` at the unit size of ``microbatches`` micro-batches.
    """
    student, teacher = prepare_models(task)
    student = [b.to(device) for b in student]
    teacher = [b.to(device) for b in teacher]
    s_views, t_views = task.split_inputs(batch, 0)
    to_dev = lambda x: map_structure(lambda t: t.to(device), x)  # noqa: E731
    s_unit, t_unit = (
        to_dev(scatter(s_views[0], microbatches)[0]),
        to_dev(scatter(t_views[0], microbatches)[0]),
    )
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16)  # noqa: E731
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    t_fwd, t_bytes, x = [], [], t_unit
    for block in teacher:

        def run_teacher(block=block, x=x):
            with torch.no_grad(), autocast():
                out = block(x)
            sync()
            return out

        run_teacher()
        t_fwd.append(_median_ms(run_teacher, repeats))
        x = run_teacher()
        t_bytes.append(_nbytes(x))

    s_fwd, s_bwd, s_bytes, x = [], [], [], s_unit
    outputs = []
    for block in student:
        inp = detached_leaves(x) if x is not s_unit else x

        def forward(block=block, inp=inp):
            with autocast():
                out = block(inp)
            sync()
            return out

        def forward_backward(block=block, inp=inp):
            out = forward(block, inp)
            outs = [t for t in tensors(out) if t.requires_grad]
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
            sync()

        forward()
        forward_backward()
        fwd = _median_ms(forward, repeats)
        both = _median_ms(forward_backward, repeats)
        s_fwd.append(fwd)
        s_bwd.append(max(both - fwd, 0.0))
        with torch.no_grad():
            x = forward()
        s_bytes.append(_nbytes(x))
        outputs.append(x)
    for block in student:
        block.zero_grad(set_to_none=True)

    # loss over the whole mini-batch: each view's outputs are the profiled unit's, repeated
    with torch.no_grad():
        t_out = t_unit
        for block in teacher:
            t_out = block(t_out)
    s_out = outputs[-1]
    loss_ms = 0.0
    if isinstance(s_out, torch.Tensor) and isinstance(t_out, torch.Tensor):

        def loss_once():
            s = [torch.cat([s_out] * microbatches).requires_grad_() for _ in range(task.views)]
            t = [torch.cat([t_out] * microbatches) for _ in range(task.views)]
            task.loss(s, t, task.loss_context(batch, 0))["loss"].backward()
            sync()

        try:
            loss_ms = _median_ms(loss_once, repeats)
        except (RuntimeError, ValueError, IndexError):  # uneven micro-batches: leave it out
            loss_ms = 0.0

    # optimizer step + EMA over the whole model, spread over blocks by parameter count
    model = nn.Sequential(*student)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer = optimizer_factory(list(model.named_parameters()))
    teacher_model = nn.Sequential(*teacher)

    def step():
        optimizer.step()
        if task.teacher_rule.kind == "ema":
            ema_update_(teacher_model, model, 0.99)
        sync()

    step()
    opt_total = _median_ms(step, repeats)
    counts = [sum(p.numel() for p in b.parameters()) for b in student]
    opt = [opt_total * c / max(sum(counts), 1) for c in counts]
    param_bytes = [float(sum(p.numel() * p.element_size() for p in b.parameters())) for b in student]
    return BlockCosts(
        samples=tensors(s_unit)[0].shape[0],
        teacher_fwd=t_fwd,
        student_fwd=s_fwd,
        student_bwd=s_bwd,
        teacher_bytes=t_bytes,
        student_bytes=s_bytes,
        loss_ms=loss_ms,
        opt_ms=opt,
        param_bytes=param_bytes,
    )


def cost_model(
    costs: BlockCosts, balance: Sequence[int], teacher_balance: Sequence[int], link: Link
) -> CostModel:
    """Per-stage unit costs of a partition from measured block costs."""
    return stage_cost_model(
        costs.teacher_fwd,
        costs.student_fwd,
        costs.student_bwd,
        costs.teacher_bytes,
        costs.student_bytes,
        costs.opt_ms,
        [0.0] * len(costs.teacher_fwd),
        Partition(tuple(balance), tuple(teacher_balance), tied=False),
        link,
        costs.loss_ms,
    )


def bound_samples_per_s(costs: BlockCosts, units: int, batch: int, stages: int) -> float:
    """Bubble-free bound: ``stages x batch / (all work of one mini-batch on one device)``."""
    work = units * (sum(costs.teacher_fwd) + sum(costs.student_fwd) + sum(costs.student_bwd))
    work += costs.loss_ms + sum(costs.opt_ms)
    return stages * batch / work * 1e3


def predict(
    schedule: str,
    costs: BlockCosts,
    config: PipelineConfig,
    views: int,
    teacher: str,
    batch: int,
    balance: Sequence[int],
    teacher_balance: Sequence[int],
    link: Link,
) -> tuple[float | None, list[dict]]:
    """Simulated samples/s of a run and its timeline records (``costs`` profiled at the run's
    unit size).

    Pipeline schedules are simulated directly. The torch pipelining peer is a forward-only
    teacher pass followed by a student pass, so it is predicted as the sum of two simulations
    (teacher alone, then the student alone, with the matching torch schedule). ``ddp`` is one
    replica's work on its share of the batch plus a ring all-reduce of the gradients.

    Returns:
        (samples/s, records); (None, []) for runs no model covers.
    """
    stages, micro = config.stages, config.microbatches
    spec = get_schedule(schedule)
    model = cost_model(costs, balance, teacher_balance, link)
    if spec.is_pipeline:
        built = build_schedule(schedule, stages, micro, teacher, 8, config.pieces, views)
        result = simulate(built, model, batch)
        return result.samples_per_s, [r.to_dict() for r in result.records]
    if spec.runner == "torch":
        zero = tuple(0.0 for _ in range(stages))
        teacher_only = CostModel(model.teacher_fwd, zero, zero, model.teacher_bytes, zero, zero, 0.0, link)
        student_only = CostModel(
            zero,
            model.student_fwd,
            model.student_bwd,
            zero,
            model.student_bytes,
            model.opt_ms,
            model.loss_ms,
            link,
        )
        t_run = simulate(build_schedule("gpipe", stages, micro, teacher, 8, 1, views), teacher_only, batch)
        s_run = simulate(
            build_schedule(spec.student_schedule, stages, micro, teacher, 8, 1, views), student_only, batch
        )
        return batch / (t_run.step_ms + s_run.step_ms) * 1e3, []
    if spec.runner == "ddp":
        # costs profiled at one replica's share (batch / stages samples per view)
        step, _ = ddp_step(
            forward_ms=views * (sum(costs.teacher_fwd) + sum(costs.student_fwd)),
            backward_ms=views * sum(costs.student_bwd),
            other_ms=costs.loss_ms + sum(costs.opt_ms),
            grad_bytes=sum(costs.param_bytes),
            replicas=stages,
            link=link,
            overlap=0.0,
        )
        return batch / step * 1e3, []
    return None, []


# ---- timed runs on every rank -------------------------------------------------------------------


def probe_link(nbytes: int, repeats: int = 10) -> Link:
    """Measure the link between ranks 0 and 1 with a ping-pong of ``nbytes`` (and of 8 bytes for
    latency) over the default process group. Every rank must call it; ranks >= 2 just wait."""
    rank = dist.get_rank()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )

    def pingpong(size: int) -> float:
        buf = torch.zeros(max(size // 4, 1), dtype=torch.float32, device=device)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append((time.perf_counter() - start) / 2)
        return statistics.median(times)

    small, big = pingpong(8), pingpong(nbytes)
    stats = torch.tensor([small, big], dtype=torch.float64)
    dist.broadcast(stats, 0)
    small, big = float(stats[0]), float(stats[1])
    gbps = nbytes / max(big - small, 1e-9) / 1e9
    return Link(gbps=max(gbps, 1e-3), latency_us=small * 1e6)


def _rss_gib() -> float:
    """Resident memory of this process now, GiB (Linux)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def timed_run(
    runner: Any,
    batches: Iterable[Any],
    steps: int,
    out: Path | None,
    extra: dict | None = None,
) -> dict | None:
    """Run ``steps`` steps with timeline recording and collect every rank's step ends and
    records on rank 0, written to ``out`` as JSON.

    Returns:
        On rank 0 (or without a process group) the result dict: ``step_end_s`` (latest over
        ranks, per step), ``records`` (all ranks, ms from a common origin), ``peak_rss_gib``
        (largest over ranks), ``losses`` and ``extra``; None elsewhere.
    """
    device = getattr(runner, "device", torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss = [_rss_gib()]
    log = runner.run(batches, steps, on_step=lambda b, losses: rss.append(_rss_gib()))
    # CPU: largest resident set seen at a step end during this run; CUDA: allocator peak
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else max(rss)
    mine = {
        "t0_s": log.t0_s,
        "step_end_s": log.step_end_s,
        "records": [r.to_dict() for r in log.records],
        "losses": log.losses,
        "peak": peak,
    }
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if dist.get_rank() != 0:
            return None
    else:
        parts = [mine]
    origin = min(p["t0_s"] for p in parts)
    records = []
    for p in parts:
        shift = (p["t0_s"] - origin) * 1e3
        records += [
            {**r, "start_ms": r["start_ms"] + shift, "end_ms": r["end_ms"] + shift} for r in p["records"]
        ]
    result = {
        "step_end_s": [max(p["step_end_s"][b] for p in parts) - origin for b in range(steps)],
        "records": records,
        "peak_gib": max(p["peak"] for p in parts),
        "losses": next((p["losses"] for p in parts if p["losses"]), []),
        "extra": extra or {},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result))
    return result


def median_step_s(step_end_s: Sequence[float], warmup: int) -> float:
    """Median time between consecutive step ends after ``warmup`` steps.

    Raises:
        ValueError: if fewer than two steps follow the warm-up.
    """
    ends = list(step_end_s)
    if len(ends) - warmup < 2:
        raise ValueError(f"need at least 2 steps after {warmup} warm-up steps, have {len(ends)}")
    return statistics.median(b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :]))
