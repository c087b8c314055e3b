"""experiments.calibrate writes files core.calibration reads, with the blocks the engine runs."""

from __future__ import annotations

import json

import pytest

from core.calibration import load_calibration
from core.overrides import apply_overrides
from core.paper_scale import sequential_check
from core.runtime import prepare_models
from experiments.calibrate import calibrate, main, write
from methods.registry import get_method

# a KD run needs no trained teacher to be timed
KD = ("method.dataset=synthetic", "method.teacher_checkpoint=random")


@pytest.mark.parametrize(
    ("method", "teacher", "views", "overrides"),
    [("byol", "ema", 2, ()), ("soft_target", "frozen", 1, KD)],
)
def test_files_read_back_with_the_engine_blocks(tmp_path, method, teacher, views, overrides):
    base, sweep = calibrate(method, "tiny", "cpu", sweep=[8, 16], repeats=1, overrides=overrides)
    path = write(base, sweep, tmp_path)
    cal = load_calibration(path)
    spec = get_method(method)
    task = spec.setup(apply_overrides(spec.preset("tiny"), list(overrides))).task
    student, teacher_blocks = prepare_models(task)
    mirrored = len(student) - task.predictor_blocks
    assert (len(cal.student_fwd), len(cal.teacher_fwd)) == (mirrored, len(teacher_blocks))
    assert len(base["predictor_blocks"]["fwd_ms"]) == task.predictor_blocks
    assert (cal.teacher, cal.views, cal.batch, cal.microbatch) == (teacher, views, 32, 4)
    assert sorted(cal.sweep) == [4, 8, 16] and cal.cost_model == "realistic"
    # a tiny block's backward may time at 0 (forward+backward minus forward, under noise)
    assert all(v >= 0 for v in (*cal.student_fwd, *cal.student_bwd, *cal.teacher_fwd))
    assert min(sum(cal.student_fwd), sum(cal.student_bwd), sum(cal.teacher_fwd)) > 0
    assert (cal.ema_ms > 0) == (teacher == "ema")
    assert base["seq_step_ms"] >= base["teacher_fwd_ms"]
    check = sequential_check(cal)  # the simulator reads the measured step
    assert check["measured_ms"] == pytest.approx(views * base["seq_step_ms"])
    assert load_calibration(path, "linear").cost_model == "linear"


def test_summary_keeps_one_entry_per_pair(tmp_path):
    base, sweep = calibrate("byol", "tiny", "cpu", sweep=[8], repeats=1, pair="byol_a")
    write(base, sweep, tmp_path)
    write(base, sweep, tmp_path)
    write({**base, "pair": "byol_b"}, {**sweep, "pair": "byol_b"}, tmp_path)
    pairs = [e["pair"] for e in json.loads((tmp_path / "summary.json").read_text())]
    assert pairs == ["byol_a", "byol_b"]


def test_bad_input_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="must start with 'byol'"):
        calibrate("byol", "tiny", pair="kd_x")
    with pytest.raises(ValueError, match=r"\[12\] do not divide the batch of 32"):
        calibrate("byol", "tiny", sweep=[8, 12])
    assert main(["--method", "byol", "--preset", "tiny", "--sweep", "5", "--out", str(tmp_path)]) == 2
    assert "do not divide" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_compiled_calibration_is_its_own_pair(tmp_path):
    # the eager backend: dynamo traces every block and whole network, no code generation
    args = ["--method", "byol", "--preset", "tiny", "--sweep", "8", "--repeats", "1"]
    compiled = [*args, "--compile", "default", "--compile-backend", "eager", "--out", str(tmp_path)]
    assert main(compiled) == 0
    base = json.loads((tmp_path / "byol_tiny-compiled_fp32.json").read_text())
    assert (base["compile"], base["compile_backend"]) == ("default", "eager")
    assert (tmp_path / "byol_tiny-compiled_mbsweep_fp32.json").exists()
    cal = load_calibration(tmp_path / "byol_tiny-compiled_mbsweep_fp32.json")
    assert sorted(cal.sweep) == [4, 8]
    assert min(sum(cal.student_fwd), sum(cal.teacher_fwd)) > 0
