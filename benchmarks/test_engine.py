"""The engine's overhead: its one-stage ``sequential`` step against a plain PyTorch loop on the
same model, batch and optimiser; and building, validating and lowering a large schedule."""

from __future__ import annotations

import torch
from torch import nn

from core.momentum import ema_update_
from core.runtime import make_runner, prepare_models
from core.schedules import build_schedule
from core.task import upcast
from core.validate import validate
from methods.registry import get_method

STEPS = 8  # per round: the engine's run builds and validates its program once per call
ROUNDS = 10


def _setup():
    spec = get_method("synthetic")
    config = spec.preset("bench")
    return spec.setup(config), config


def test_plain_loop(benchmark):
    """Teacher forward without grad, student forward and backward on each view, the loss,
    SGD and the EMA update: the same work as the engine's step, written by hand."""
    run, _ = _setup()
    task = run.task
    student_blocks, teacher_blocks = prepare_models(task)
    student, teacher = nn.Sequential(*student_blocks), nn.Sequential(*teacher_blocks)
    optimizer = run.optimizer(list(student.named_parameters()))
    batches = list(run.batches(0, STEPS))

    def steps():
        for step, batch in enumerate(batches):
            s_in, t_in = task.split_inputs(batch, step)
            with torch.no_grad():
                t_out = [upcast(teacher(x)) for x in t_in]
            s_out = [upcast(student(x)) for x in s_in]
            task.loss(s_out, t_out, task.loss_context(batch, step))["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_update_(teacher, student, task.teacher_rule.momentum(step))

    benchmark.extra_info["steps"] = STEPS
    benchmark.pedantic(steps, rounds=ROUNDS, warmup_rounds=2)


def test_engine_step(benchmark):
    """The engine's ``sequential`` schedule on one stage, same task and data."""
    run, config = _setup()
    runner = make_runner(run.task, config.pipeline, torch.device("cpu"), run.optimizer, run.scheduler)
    batches = list(run.batches(0, STEPS))
    done = [0]  # the runner's teacher has had this many updates: each call continues from there

    def steps():
        runner.run(batches, STEPS, start=done[0])
        done[0] += STEPS

    benchmark.extra_info["steps"] = STEPS
    benchmark.pedantic(steps, rounds=ROUNDS, warmup_rounds=2)


def test_build_validate_lower_tspipe_n16_m32(benchmark):
    """A 16-stage tspipe of 32 micro-batches of two views, three mini-batches: built, lowered and
    checked (what a run does once before it starts)."""
    benchmark.pedantic(
        lambda: validate(build_schedule("tspipe", 16, 32, "ema", 3, views=2)), rounds=5, warmup_rounds=1
    )
