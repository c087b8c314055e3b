"""The runtime in one process, configuration checks, and schedule unrolling."""

import pytest
import torch

from core.action import Op
from core.config import PipelineConfig
from core.launch import main as launch_main
from core.runtime import make_runner, resolve_balances
from core.runtime.pipeline import PipelineRunner
from core.schedules import Program, build_schedule, get_schedule, schedules
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import ToyTask, make_batches, reference, sgd


@pytest.mark.parametrize("teacher", ["ema", "frozen"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_sequential_engine_equals_the_reference(teacher, dtype, tolerance):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        task = ToyTask(teacher, True, 3)
        config = PipelineConfig("sequential", 1, 3, record_timeline=True)
        runner = make_runner(task, config, torch.device("cpu"), sgd)
        log = runner.run(make_batches(3), 3)
        got = runner.stage_state()
        want = reference(ToyTask(teacher, True, 3), make_batches(3), 3)
    finally:
        torch.set_default_dtype(previous)
    assert relative_difference(got["student"], want["student"]) <= tolerance
    assert relative_difference(got["teacher"], want["teacher"]) <= tolerance
    assert len(log.losses) == 3 and len(log.step_end_s) == 3
    ops = {r.op for r in log.records}
    assert {"TF", "SF", "SB", "LOSS", "OPT"} <= ops
    assert all(r.end_ms >= r.start_ms >= 0 for r in log.records)


def test_tspipe_on_one_stage_uses_the_stale_teacher():
    task = ToyTask("ema", True, 3)
    runner = make_runner(task, PipelineConfig("tspipe", 1, 2), torch.device("cpu"), sgd)
    runner.run(make_batches(3), 3)
    want = reference(ToyTask("ema", True, 3), make_batches(3), 2, 2, staleness=1)
    assert relative_difference(runner.stage_state()["student"], want["student"]) <= 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule="pipedream"), "unknown schedule 'pipedream'"),
        (dict(schedule="sequential", stages=2), "sequential runs on one process"),
        (dict(schedule="mp", stages=2, microbatches=2), "mp runs one micro-batch"),
        (dict(schedule="gpipe", stages=2, balance=(1, 1, 1)), "need one per stage"),
        (dict(schedule="gpipe", microbatches=0), "microbatches must be"),
        (dict(schedule="ddp", stages=2, backward_pieces=2), "does not split backwards"),
        (dict(schedule="gpipe", max_grad_norm=-1.0), "max_grad_norm must be > 0"),
    ],
)
def test_bad_configs_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        PipelineConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_world_size_must_equal_stages():
    with pytest.raises(ValueError, match="needs 2 processes, got 1"):
        PipelineRunner(ToyTask(), PipelineConfig("gpipe", 2, 2), torch.device("cpu"), sgd)


def test_1f1b_needs_a_microbatch_loss():
    class WholeBatchOnly(ToyTask):
        microbatch_loss = ToyTask.__mro__[1].microbatch_loss  # the Task default

    with pytest.raises(ValueError, match="defines no microbatch_loss"):
        make_runner(WholeBatchOnly(), PipelineConfig("1f1b", 1, 2), torch.device("cpu"), sgd)


def test_balances_resolve_and_check():
    ema = ToyTask("ema")
    assert resolve_balances(PipelineConfig("gpipe", 2, 1), ema, 5, 4) == ([2, 3], [2, 2])
    assert resolve_balances(PipelineConfig("gpipe", 2, 1, balance=(1, 4)), ema, 5, 4) == ([1, 4], [1, 3])
    with pytest.raises(ValueError, match="must be split like the student"):
        resolve_balances(PipelineConfig("gpipe", 2, 1, balance=(1, 4), teacher_balance=(2, 2)), ema, 5, 4)
    with pytest.raises(ValueError, match="sums to 4 but the student has 5"):
        resolve_balances(PipelineConfig("gpipe", 2, 1, balance=(2, 2)), ema, 5, 4)
    frozen = ToyTask("frozen")
    assert resolve_balances(PipelineConfig("gpipe", 2, 1), frozen, 4, 6) == ([2, 2], [3, 3])
    with pytest.raises(ValueError, match="5 stages but the student has only 4"):
        resolve_balances(PipelineConfig("gpipe", 5, 1), frozen, 4, 6)


@pytest.mark.parametrize("name", [s.name for s in schedules("pipeline")])
def test_program_unrolls_to_the_full_schedule(name):
    spec = get_schedule(name)
    stages, micro = spec.stages or 3, spec.microbatches or 2
    for steps in (1, 2, 3, 7):
        program = Program.build(name, stages, micro, "ema", steps, views=2)
        full = build_schedule(name, stages, micro, "ema", steps, views=2)
        for s in range(stages):
            assert [a for b in range(steps) for a in program.segment(s, b)] == list(full.lowered[s])
            assert program.segment(s, steps - 1)[-1].op == Op.OPT


def test_launcher_rejects_a_bad_process_count(capsys):
    assert launch_main(["--nproc", "0", "json.tool"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
