"""Per-block costs of a task measured on this machine: each teacher and student block timed
alone at a unit size, the loss, and the optimizer step with the teacher update; and a fixed +
per-sample fit over several unit sizes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

from core.calibration import fit_fixed_per_sample
from core.momentum import ema_update_
from core.runtime import prepare_models
from core.runtime.compiled import compile_module, recompile_room
from core.task import Structure, Task, detached_leaves, map_structure, scatter, tensors


@dataclass
class BlockCosts:
    """Measured per-block costs of a task at one unit size (milliseconds per unit).

    Attributes:
        samples: samples in the unit the costs were measured at.
        teacher_fwd, student_fwd, student_bwd: per block.
        teacher_bytes, student_bytes: bytes of each block's output for one unit.
        loss_ms: the loss over the whole mini-batch (every unit).
        opt_ms: optimizer step plus teacher update per block: the whole model's, spread over the
            blocks as each block's own step costs when timed alone.
        param_bytes: bytes of each student block's parameters (what ddp all-reduces).
        student_bwd_input: the input-gradient half of each student block's backward (a split
            backward's ``SB``; the rest is its weight half); the whole backward for the first
            block, whose input needs no gradient; empty when not measured.
        student_bwd_split: each student block's backward done as a split one does it (the input
            half keeping the graph, then the weight half), in all: more than ``student_bwd``;
            the whole backward for the first block; empty when not measured. Both halves are
            timed with the functions the runtime splits with (``torch.distributed.pipelining``'s
            ``stage_backward_input`` / ``stage_backward_weight``), graph walks included.
        input_ms: making one mini-batch's inputs on the first stage (data and augmentations),
            measured in a training step's timeline (:mod:`core.step_fit`); 0 from a profile.
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
    student_bwd_input: list[float] = field(default_factory=list)
    student_bwd_split: list[float] = field(default_factory=list)
    input_ms: float = 0.0

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
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> BlockCosts:
    """Time each block of student and teacher on one unit of ``batch`` (first view, first
    micro-batch): forward, and backward of the student from a random output gradient. Also the
    loss over the whole batch, and the optimizer step and teacher update, spread over blocks by
    each block's own step timed alone (:func:`step_costs_by_block`).

    Args:
        compile_mode: time every block compiled (``torch.compile`` with this mode, as
            ``pipeline.compile`` runs stages; the untimed first call compiles); None: eager.
        compile_backend: the ``torch.compile`` backend when compiling.

    Returns:
        :class:`BlockCosts` at the unit size of ``microbatches`` micro-batches.
    """
    with recompile_room():
        return _profile_blocks(
            task,
            batch,
            microbatches,
            optimizer_factory,
            device,
            repeats,
            amp_bf16,
            compile_mode,
            compile_backend,
        )


def _profile_blocks(
    task: Task,
    batch: Any,
    microbatches: int,
    optimizer_factory: Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer],
    device: torch.device,
    repeats: int,
    amp_bf16: bool,
    compile_mode: str | None,
    compile_backend: str,
) -> BlockCosts:
    student, teacher = prepare_models(task)
    student = [b.to(device) for b in student]
    teacher = [b.to(device) for b in teacher]
    mode = compile_mode or "none"
    run_of = {id(b): compile_module(b, mode, compile_backend) for b in (*student, *teacher)}
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
                out = run_of[id(block)](x)
            sync()
            return out

        run_teacher()
        t_fwd.append(_median_ms(run_teacher, repeats))
        x = run_teacher()
        t_bytes.append(_nbytes(x))

    s_fwd, s_bwd, s_bwd_input, s_bwd_split, s_bytes, x = [], [], [], [], [], s_unit
    outputs = []
    for block in student:
        inp = detached_leaves(x) if x is not s_unit else x

        def forward(block=block, inp=inp):
            with autocast():
                out = run_of[id(block)](inp)
            sync()
            return out

        def forward_backward(block=block, inp=inp):
            out = forward(block, inp)
            outs = [t for t in tensors(out) if t.requires_grad]
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
            sync()

        def forward_input_backward(block=block, inp=inp):
            # a fresh leaf every call: stage_backward_input detaches the outputs in place, and a
            # block that passes its input through (DistilBERT's head) would lose the input's grad
            leaf = detached_leaves(inp)
            out = forward(block, leaf)
            outs = [t for t in tensors(out) if t.requires_grad]
            wrt = [t for t in tensors(leaf) if t.requires_grad]
            _, groups = stage_backward_input(
                outs, [torch.ones_like(t) for t in outs], wrt, block.parameters()
            )
            sync()
            return groups

        def forward_split_backward(block=block, inp=inp):
            # the runtime's split (core.runtime.stage): its graph walks cost as much as the math
            # on a block of many small tensors
            stage_backward_weight(block.parameters(), forward_input_backward(block, inp))
            sync()

        forward()
        forward_backward()
        fwd = _median_ms(forward, repeats)
        both = _median_ms(forward_backward, repeats)
        s_fwd.append(fwd)
        s_bwd.append(max(both - fwd, 0.0))
        if any(t.requires_grad for t in tensors(inp)):
            forward_input_backward()
            s_bwd_input.append(min(max(_median_ms(forward_input_backward, repeats) - fwd, 0.0), s_bwd[-1]))
            forward_split_backward()
            s_bwd_split.append(max(_median_ms(forward_split_backward, repeats) - fwd, s_bwd[-1]))
        else:  # the first block: its input half is the whole backward
            s_bwd_input.append(s_bwd[-1])
            s_bwd_split.append(s_bwd[-1])
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

    # optimizer step + EMA over the whole model, spread over blocks as each block's own end of
    # step costs (timed block by block: per-tensor overheads, not parameter counts, dominate
    # small blocks)
    model = nn.Sequential(*student)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer = optimizer_factory(list(model.named_parameters()))
    teacher_model = nn.Sequential(*teacher)
    ema = task.teacher_rule.kind == "ema"

    def step():
        optimizer.step()
        if ema:
            ema_update_(teacher_model, model, 0.99)
        sync()

    step()
    opt_total = _median_ms(step, repeats)
    opt = step_costs_by_block(student, teacher if ema else [], optimizer_factory, repeats, sync)
    opt = [opt_total * x / max(sum(opt), 1e-12) for x in opt]
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
        student_bwd_input=s_bwd_input,
        student_bwd_split=s_bwd_split,
    )


def step_costs_by_block(
    student: Sequence[nn.Module],
    teacher: Sequence[nn.Module],
    optimizer_factory: Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer],
    repeats: int,
    sync: Callable[[], None],
) -> list[float]:
    """Each student block's optimizer step (its own optimizer) and EMA of its teacher block (the
    block of the same index, when ``teacher`` is given), timed block by block, in ms."""
    out = []
    for i, block in enumerate(student):
        named = [(n, p) for n, p in block.named_parameters() if p.requires_grad]
        if not named:
            out.append(0.0)
            continue
        optimizer = optimizer_factory(named)
        pair = teacher[i] if i < len(teacher) else None

        def step(optimizer=optimizer, block=block, pair=pair):
            optimizer.step()
            if pair is not None:
                ema_update_(pair, block, 0.99)
            sync()

        step()
        out.append(_median_ms(step, repeats))
    return out


def fitted_costs(profiles: Sequence[BlockCosts], samples: int) -> BlockCosts:
    """Per-block costs at ``samples`` per unit from profiles at several unit sizes: every block's
    forward, backward and the loss as ``fixed + per_sample x size`` (least squares over the
    profiled sizes), which also smooths their noise; with one profile, that profile scaled
    linearly (the input halves of the backward too, when every profile has them). Bytes scale
    linearly; the optimizer step does not depend on the unit size.

    Raises:
        ValueError: without profiles.
    """
    if not profiles:
        raise ValueError("no profiles to fit")
    ordered = sorted(profiles, key=lambda c: c.samples)
    sizes = [c.samples for c in ordered]
    base = min(ordered, key=lambda c: abs(c.samples - samples))

    def fit(values: Sequence[float]) -> float:
        if len(set(sizes)) < 2:
            return values[0] * samples / sizes[0]
        fixed, per_sample = fit_fixed_per_sample(sizes, values)
        return fixed + per_sample * samples

    def per_block(field: str) -> list[float]:
        columns = [getattr(c, field) for c in ordered]
        return [fit([col[i] for col in columns]) for i in range(len(columns[0]))]

    ratio = samples / base.samples
    return BlockCosts(
        samples=samples,
        teacher_fwd=per_block("teacher_fwd"),
        student_fwd=per_block("student_fwd"),
        student_bwd=per_block("student_bwd"),
        teacher_bytes=[b * ratio for b in base.teacher_bytes],
        student_bytes=[b * ratio for b in base.student_bytes],
        loss_ms=fit([c.loss_ms for c in ordered]),
        opt_ms=list(base.opt_ms),
        param_bytes=list(base.param_bytes),
        student_bwd_input=per_block("student_bwd_input") if all(c.student_bwd_input for c in ordered) else [],
        student_bwd_split=per_block("student_bwd_split") if all(c.student_bwd_split for c in ordered) else [],
        input_ms=base.input_ms,
    )
