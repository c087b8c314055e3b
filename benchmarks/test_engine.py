"""The engine's overhead: its one-stage ``sequential`` step against a plain PyTorch loop on the
same model, batch and optimiser, interleaved round by round; and building, validating and
lowering a large schedule."""

from __future__ import annotations

import time

import torch
from torch import nn

from core.momentum import ema_update_
from core.runtime import make_runner, prepare_models
from core.schedules import build_schedule
from core.task import upcast
from core.validate import validate
from methods.registry import get_method

STEPS = 8  # per round: the engine's run builds and validates its program once per call
ROUNDS = 14  # even: as many rounds start with the plain loop as with the engine


def _setup():
    spec = get_method("synthetic")
    config = spec.preset("bench")
    return spec.setup(config), config


def _plain_loop():
    """Teacher forward without grad, student forward and backward on each view, the loss,
    SGD and the EMA update: the same work as the engine's step, written by hand. Returns a
    function that runs ``STEPS`` such steps."""
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

    return steps


def _engine_steps():
    """The engine's ``sequential`` schedule on one stage, same task and data: a function that
    runs ``STEPS`` steps, each call continuing from the last."""
    run, config = _setup()
    runner = make_runner(run.task, config.pipeline, torch.device("cpu"), run.optimizer, run.scheduler)
    batches = list(run.batches(0, STEPS))
    done = [0]  # the runner's teacher has had this many updates: each call continues from there

    def steps():
        runner.run(batches, STEPS, start=done[0])
        done[0] += STEPS

    return steps


def test_engine_over_plain_loop(benchmark):
    """The engine's one-stage step against the plain loop, interleaved: each round runs both, in
    alternating order, so a drift of the machine hits both alike; the per-round times go to
    ``extra_info`` (``plain_s``, ``engine_s``), from which the report takes the per-round ratio.
    pytest-benchmark's own statistics are of the pair."""
    plain, engine = _plain_loop(), _engine_steps()
    times: dict[str, list[float]] = {"plain_s": [], "engine_s": []}
    order = [0]

    def pair():
        first = order[0] % 2 == 0
        order[0] += 1
        for name, steps in (("plain_s", plain), ("engine_s", engine))[:: 1 if first else -1]:
            started = time.perf_counter()
            steps()
            times[name].append(time.perf_counter() - started)

    benchmark.pedantic(pair, rounds=ROUNDS, warmup_rounds=2)
    # the warm-up rounds ran through the same function: keep the timed rounds only
    for name, values in times.items():
        benchmark.extra_info[name] = values[-ROUNDS:]
    benchmark.extra_info["steps"] = STEPS


def test_build_validate_lower_tspipe_n16_m32(benchmark):
    """A 16-stage tspipe of 32 micro-batches of two views, three mini-batches: built, lowered and
    checked (what a run does once before it starts)."""
    benchmark.pedantic(
        lambda: validate(build_schedule("tspipe", 16, 32, "ema", 3, views=2)), rounds=5, warmup_rounds=1
    )
