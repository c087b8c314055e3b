"""How a partition's work splits over its stages, timed stage by stage.

The simulator's per-stage costs are sums of per-block costs from a profile (each block timed
alone on a prepared input) that a one-process step has scaled per kind of work
(:mod:`core.step_fit`). The step fixes each kind's total; the profile alone decides how that
total splits over the stages, and block by block it splits it differently from a stage run
whole: on the synthetic pair at 4 micro-batches the last stage's backward is 1.06-1.10x the
first's summed from blocks, 1.19-1.23x timed stage by stage, and 1.21x inside the pipeline. The
partition is chosen to balance the profile, so every such error leaves a stage the simulator
thinks balanced slower than it is, and the prediction optimistic.

:func:`stage_times` times each stage whole (its blocks chained, as the runtime runs them) on one
process, over one mini-batch's units in the one-process step's order (every forward, then every
backward); :func:`split_by_stage` gives each stage of a kind's total the share those timings say,
keeping the total (so the one-process step is still reproduced) and the profile's proportions
within a stage.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from core.partition import stage_modules, stage_slices
from core.profile import BlockCosts
from core.runtime import prepare_models
from core.task import Task, detached_leaves, map_structure, scatter, tensors

KINDS = ("teacher_fwd", "student_fwd", "student_bwd")


def build_stages(
    task: Task, balance: Sequence[int], teacher_balance: Sequence[int], device: torch.device
) -> tuple[list[nn.Module], list[nn.Module]]:
    """The student's and the teacher's stages of a partition, each its blocks chained."""
    student, teacher = ([b.to(device) for b in blocks] for blocks in prepare_models(task))
    return (
        [stage_modules(student, balance, s) for s in range(len(balance))],
        [stage_modules(teacher, teacher_balance, s) for s in range(len(teacher_balance))],
    )


def batch_units(task: Task, batch: Any, microbatches: int, device: torch.device) -> tuple[list, list]:
    """A mini-batch's units (every view's micro-batches) for the student and the teacher."""
    s_views, t_views = task.split_inputs(batch, 0)
    move = lambda u: map_structure(lambda t: t.to(device), u)  # noqa: E731
    return (
        [move(u) for v in s_views for u in scatter(v, microbatches)],
        [move(u) for v in t_views for u in scatter(v, microbatches)],
    )


def _pass(student: nn.Module, teacher: nn.Module, s_in: list, t_in: list, first: bool, sync):
    """One stage over every unit: teacher forwards, student forwards, student backwards (from a
    gradient of ones); (ms per unit of each, the outputs the next stage takes)."""
    start = time.perf_counter()
    with torch.no_grad():
        t_out = [teacher(x) for x in t_in]
    sync()
    tf = time.perf_counter() - start
    held = []
    start = time.perf_counter()
    for x in s_in:
        held.append(student(x if first else detached_leaves(x)))
    sync()
    sf = time.perf_counter() - start
    start = time.perf_counter()
    for out in held:
        outs = [t for t in tensors(out) if t.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
    sync()
    sb = time.perf_counter() - start
    student.zero_grad(set_to_none=True)
    s_out = [map_structure(lambda t: t.detach(), out) for out in held]
    units = max(len(s_in), 1)
    return (tf * 1e3 / max(len(t_in), 1), sf * 1e3 / units, sb * 1e3 / units), s_out, t_out


def stage_times(
    task: Task,
    batch: Any,
    microbatches: int,
    balance: Sequence[int],
    teacher_balance: Sequence[int],
    device: torch.device,
    repeats: int = 5,
) -> list[tuple[float, float, float]]:
    """Per stage, (teacher forward, student forward, student backward) in ms per unit, each stage
    timed whole over the units of one mini-batch of ``batch`` at ``microbatches`` micro-batches
    (forwards of every unit, then backwards): the median of ``repeats`` passes after an untimed
    one.

    Raises:
        ValueError: when the two partitions have different numbers of stages.
    """
    if len(balance) != len(teacher_balance):
        raise ValueError(
            f"student partition {list(balance)} and teacher {list(teacher_balance)} differ in stages"
        )
    students, teachers = build_stages(task, balance, teacher_balance, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    units = batch_units(task, batch, microbatches, device)
    passes = []
    for k in range(repeats + 1):
        s_in, t_in = units
        times = []
        for s, (student, teacher) in enumerate(zip(students, teachers)):
            took, s_in, t_in = _pass(student, teacher, s_in, t_in, s == 0, sync)
            times.append(took)
        if k:
            passes.append(times)
    return [
        tuple(statistics.median(p[s][kind] for p in passes) for kind in range(len(KINDS)))
        for s in range(len(balance))
    ]


def split_by_stage(
    costs: BlockCosts,
    balance: Sequence[int],
    teacher_balance: Sequence[int],
    times: Sequence[Sequence[float]],
) -> BlockCosts:
    """``costs`` with each kind's total (teacher forward, student forward, student backward)
    split over the partition's stages in the shares ``times`` (:func:`stage_times`) give: every
    block of a stage scaled by one factor per kind, so a kind's total and the proportions within
    a stage stay as they were. The backward's halves (``student_bwd_input``,
    ``student_bwd_split``) take the backward's factor. A stage the profile gives nothing of a
    kind keeps it; one stage changes nothing.

    Raises:
        ValueError: when ``times`` does not have one entry per stage.
    """
    if len(times) != len(balance) or len(teacher_balance) != len(balance):
        raise ValueError(
            f"stage times for {len(times)} stages, partitions {list(balance)} / {list(teacher_balance)}"
        )
    slices = {
        "teacher_fwd": stage_slices(teacher_balance),
        "student_fwd": stage_slices(balance),
        "student_bwd": stage_slices(balance),
    }
    fields: dict[str, list[float]] = {}
    for kind, field in enumerate(KINDS):
        values = list(getattr(costs, field))
        profiled = [sum(values[i] for i in r) for r in slices[field]]
        live = [s for s, p in enumerate(profiled) if p > 0 and times[s][kind] > 0]
        timed = sum(times[s][kind] for s in live)
        factors = [1.0] * len(balance)
        for s in live:
            factors[s] = times[s][kind] / timed * sum(profiled[t] for t in live) / profiled[s]
        names = [field] + (["student_bwd_input", "student_bwd_split"] if field == "student_bwd" else [])
        for name in names:
            column = list(getattr(costs, name))
            if not column:
                continue
            for s, r in enumerate(slices[field]):
                for i in r:
                    column[i] *= factors[s]
            fields[name] = column
    return replace(costs, **fields)
