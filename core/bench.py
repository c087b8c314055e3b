"""Throughput measurement: timed runs on every rank, steady-state step times, and predictions
from profiled block costs (``core.profile``) and the measured link (``core.link_probe``).

A benchmark is a driver that launches one timed run per schedule (``core.launch``), each rank
calling :func:`timed_run`; the driver then combines the ranks' step times into samples/s (the
median of the steady-state steps, all ranks finished: no warm-up, no last step) and compares
them with the bubble-free bound and the simulator's prediction, both built from per-block
costs profiled in the same run.
"""

from __future__ import annotations

import resource
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from core.config import PipelineConfig
from core.cost_model import CostModel, stage_cost_model
from core.ddp_model import ddp_step
from core.link import Link
from core.partition import Partition
from core.profile import BlockCosts
from core.schedules import build_schedule, furthest_ahead, get_schedule, window_batches
from core.simulate import simulate


def cost_model(
    costs: BlockCosts,
    balance: Sequence[int],
    teacher_balance: Sequence[int],
    link: Link,
    waiting: Sequence[tuple[float, float]] | None = None,
) -> CostModel:
    """Per-stage unit costs of a partition from measured block costs (``waiting``: per stage,
    the factors on split-backward halves run while other weight halves wait, ``core.deferral``)."""
    model = stage_cost_model(
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
        costs.student_bwd_input or None,
        costs.student_bwd_split or None,
        costs.input_ms,
    )
    return replace(model, waiting=tuple(waiting)) if waiting else model


def bound_samples_per_s(costs: BlockCosts, units: int, batch: int, stages: int) -> float:
    """Bubble-free bound: ``stages x batch / (all work of one mini-batch on one device)``."""
    work = units * (sum(costs.teacher_fwd) + sum(costs.student_fwd) + sum(costs.student_bwd))
    work += costs.loss_ms + sum(costs.opt_ms) + costs.input_ms
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
    waiting: Sequence[tuple[float, float]] | None = None,
) -> tuple[float | None, list[dict]]:
    """Simulated samples/s of a run and its timeline records (``costs`` profiled at the run's
    unit size; ``waiting``: :func:`cost_model`'s, for the schedules that split backwards).

    Pipeline schedules are simulated directly. The torch pipelining peer runs a forward-only
    teacher pass and then the student's schedule; a stage starts the student pass as soon as
    its own teacher forwards are done, which is the action list of our schedule of the same
    name (teacher forwards first), so that is what is simulated, with torch's messaging: each
    receive posted just before the action that needs it (over gloo its message moves only
    then), and each pass waiting for its sends to be delivered before its next phase (the
    teacher pass before the student's forwards, the forwards before the backwards). With
    global-norm clipping or ``nan_guard=skip`` every stage's step waits for the last stage to
    reach its own (the all-reduce at its start). ``ddp`` is
    one replica's work on its share of the batch plus a ring all-reduce of the gradients.

    Returns:
        (samples/s, records); (None, []) for runs no model covers.
    """
    stages, micro = config.stages, config.microbatches
    spec = get_schedule(schedule)
    sync = config.max_grad_norm is not None or config.nan_guard == "skip"  # all-reduced at the step
    model = cost_model(costs, balance, teacher_balance, link, waiting)
    if spec.is_pipeline:
        built = build_schedule(
            schedule,
            stages,
            micro,
            teacher,
            window_batches(8, furthest_ahead(schedule, stages, teacher, config.teacher_lookahead)),
            config.pieces,
            views,
            config.teacher_early,
            config.teacher_lookahead,
        )
        result = simulate(built, model, batch, step_sync=sync)
        return result.samples_per_s, [r.to_dict() for r in result.records]
    if spec.runner == "torch":
        # a forward-only teacher pass, then the student schedule, without a flush between them:
        # the actions of our own schedule of the same name (teacher forwards first), unsplit
        built = build_schedule(spec.student_schedule, stages, micro, teacher, 8, 1, views)
        result = simulate(built, model, batch, torch_p2p=True, step_sync=sync)
        return result.samples_per_s, [r.to_dict() for r in result.records]
    if spec.runner == "ddp":
        # costs profiled at one replica's share (batch / stages samples per view)
        step, _ = ddp_step(
            forward_ms=views * (sum(costs.teacher_fwd) + sum(costs.student_fwd)),
            backward_ms=views * sum(costs.student_bwd),
            other_ms=costs.loss_ms + sum(costs.opt_ms) + costs.input_ms,
            grad_bytes=sum(costs.param_bytes),
            replicas=stages,
            link=link,
            overlap=0.0,
        )
        return batch / step * 1e3, []
    return None, []


# ---- timed runs on every rank -------------------------------------------------------------------


def _rss_gib() -> float:
    """Resident memory of this process now, GiB (Linux)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def timed_run(
    runner: Any,
    batches: Iterable[Any],
    steps: int,
    extra: dict | None = None,
) -> dict | None:
    """Run ``steps`` steps with timeline recording and collect every rank's step ends and
    records on rank 0.

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
    return result


def steady_steps(step_end_s: Sequence[float], warmup: int, tail: int = 1) -> list[float]:
    """Durations of the steps that do a full step's work: after ``warmup`` steps, and without
    the last ``tail`` steps (a schedule that overlaps steps, like tspipe, has no later
    mini-batches' teacher forwards to run in its last ones, :func:`partial_steps`: counting
    them would favour it).

    Raises:
        ValueError: if fewer than two such steps remain.
    """
    ends = list(step_end_s)
    tail = max(1, tail)
    durations = [b - a for a, b in zip(ends[warmup:-tail], ends[warmup + 1 : -tail])]
    if len(durations) < 2:
        raise ValueError(
            f"need at least 2 steps between {warmup} warm-up steps and the last {tail}, have {len(ends)}"
        )
    return durations


def partial_steps(schedule: str, stages: int, teacher: str, lookahead: int | None = None) -> int:
    """How many last steps of a run do less than a whole step's work: the furthest any stage's
    teacher forwards run ahead (:func:`core.schedules.furthest_ahead`, 0 for a schedule that
    fills nothing), at least 1."""
    return max(1, furthest_ahead(schedule, stages, teacher, lookahead))


def median_step_s(step_end_s: Sequence[float], warmup: int) -> float:
    """Median steady-state step (:func:`steady_steps`)."""
    return statistics.median(steady_steps(step_end_s, warmup))
