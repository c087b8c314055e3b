"""Compiled stages (``pipeline.compile``): a run whose stage forwards go through
``torch.compile`` trains like the eager one (fp32, 1e-5 relative), on one process and on two;
the combinations a compiled stage cannot run are refused. The CPU tests use the ``eager`` and
``aot_eager`` backends (inductor's compile on CPU takes too long for a unit test)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.config import PipelineConfig
from core.runtime import make_runner
from core.runtime.compiled import compile_module
from core.schedules import schedules
from tests.conftest import launch_module
from tests.core.toy import ToyTask, make_batches, sgd

STEPS = 3


def relative(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    keys = sorted(k for k in want if want[k].is_floating_point())
    a = torch.cat([got[k].double().flatten() for k in keys])
    b = torch.cat([want[k].double().flatten() for k in keys])
    return float((a - b).norm() / b.norm())


def train_one_process(teacher: str, compile: str, backend: str, device: str = "cpu") -> dict:
    torch._dynamo.reset()
    task = ToyTask(teacher, True, STEPS)
    config = PipelineConfig(schedule="sequential", microbatches=2, compile=compile, compile_backend=backend)
    runner = make_runner(task, config, torch.device(device), sgd)
    runner.run(make_batches(STEPS), STEPS)
    return runner.stage_state()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_one_process_compiled_equals_eager(backend):
    want = train_one_process("ema", "none", "inductor")
    got = train_one_process("ema", "default", backend)
    for part in ("student", "teacher"):
        assert relative(got[part], want[part]) <= 1e-5


def test_the_forwards_run_compiled_and_the_weights_stay_eager():
    task = ToyTask("frozen", True, STEPS)
    config = PipelineConfig(schedule="sequential", compile="default", compile_backend="eager")
    runner = make_runner(task, config, torch.device("cpu"), sgd)
    assert isinstance(runner.stage.student_fn, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(runner.stage.teacher_fn, torch._dynamo.eval_frame.OptimizedModule)
    assert not any("_orig_mod" in name for name in runner.stage_state()["student"])


def test_mode_is_passed_to_inductor_only(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: seen.append(options) or module)
    module = torch.nn.Linear(2, 2)
    assert compile_module(module, "none") is module
    compile_module(module, "default")
    compile_module(module, "reduce-overhead")
    compile_module(module, "max-autotune", "aot_eager")
    assert seen == [
        {"backend": "inductor"},
        {"backend": "inductor", "mode": "reduce-overhead"},
        {"backend": "aot_eager"},
    ]


@pytest.mark.dist
def test_two_process_gpipe_compiled_equals_eager(tmp_path):
    cases = [
        dict(name=f"gpipe_{teacher}_{mode}", schedule="gpipe", teacher=teacher, microbatches=2, steps=STEPS)
        | ({"compile": "default", "compile_backend": "aot_eager"} if mode == "compiled" else {})
        for teacher in ("ema", "frozen")
        for mode in ("eager", "compiled")
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(cases))
    proc = launch_module("tests.core.dist_worker", 2, str(spec), str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for teacher in ("ema", "frozen"):
        eager = torch.load(tmp_path / f"gpipe_{teacher}_eager.pt")
        compiled = torch.load(tmp_path / f"gpipe_{teacher}_compiled.pt")
        for part in ("student", "teacher"):
            assert relative(compiled[part], eager[part]) <= 1e-5


def test_compile_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="compile must be one of none, default"):
        PipelineConfig(compile="fast")
    for spec in schedules():
        stages = max(2, spec.min_stages) if spec.stages is None else spec.stages
        micro = spec.microbatches or 2
        if spec.split_backward:
            with pytest.raises(ValueError, match="split backward"):
                PipelineConfig(schedule=spec.name, stages=stages, microbatches=micro, compile="default")
        elif not spec.is_pipeline:
            with pytest.raises(ValueError, match="runner of its own"):
                PipelineConfig(schedule=spec.name, stages=stages, microbatches=micro, compile="default")
        else:
            PipelineConfig(schedule=spec.name, stages=stages, microbatches=micro, compile="default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inductor_compiled_equals_eager_on_cuda():
    # inductor fuses and reorders fp32 reductions: equal to eager to rounding, not bit for bit
    want = train_one_process("frozen", "none", "inductor", "cuda")
    got = train_one_process("frozen", "default", "inductor", "cuda")
    for part in ("student", "teacher"):
        assert relative(got[part], want[part]) <= 1e-4


def test_reduce_overhead_outputs_outlive_the_next_replay(monkeypatch):
    """A CUDA graph writes every replay's outputs into the same memory; a stage keeps one
    micro-batch's outputs while the next runs, so the wrapper copies them out (a stand-in for
    the graph: outputs in one static buffer)."""
    static = torch.zeros(2, 3)

    def fake_compile(module, **options):
        assert options == {"backend": "inductor", "mode": "reduce-overhead"}

        def replay(x):
            with torch.no_grad():
                return static.copy_(module(x))

        return replay

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = nn.Linear(3, 3)
    run = compile_module(net, "reduce-overhead", "inductor")
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    first = run(a)
    second = run(b)
    assert torch.equal(first, net(a)) and torch.equal(second, net(b))
