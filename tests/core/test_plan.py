"""The planner: the best configuration of a tiny hand-made calibration is known by hand, a memory
limit drops GPipe (all micro-batches' activations alive) but keeps 1F1B (at most N), the JSON
parses, and bad inputs give one-line errors."""

from __future__ import annotations

import json

import pytest

from core.calibration import load_calibration
from core.candidate import per_schedule
from core.link import Link
from core.plan import main, plan
from core.schedules import get_schedule
from core.simulate import WINDOW_BATCHES

FAST = Link(gbps=1e6, latency_us=0.0)
MIB = 2**20


@pytest.fixture
def tiny(tmp_path):
    """A frozen-teacher pair of two blocks each: teacher forward = student forward = 1 ms and
    student backward = 2 ms per block at the batch of 8 (linear in samples); the first student
    block's output is 1e6 floats a sample (4 MB), the rest negligible."""
    data = {
        "pair": "kd_tiny",
        "batch": 8,
        "microbatch": 8,
        "amp_bf16": False,
        "teacher_blocks": {"fwd_ms": [1.0, 1.0], "out_shape": [[8, 10], [8, 10]]},
        "student_blocks": {"fwd_ms": [1.0, 1.0], "bwd_ms": [2.0, 2.0], "out_shape": [[8, 1000000], [8, 10]]},
    }
    path = tmp_path / "kd_tiny_fp32.json"
    path.write_text(json.dumps(data))
    return path


def test_the_best_configuration_is_known_by_hand(tiny):
    # each stage has 4 ms of work per mini-batch; only a schedule that fills every bubble with
    # the next batch's teacher forwards reaches 4 ms a step: 8 samples / 4 ms = 2000 samples/s
    ranked = plan(load_calibration(tiny), 2, link=FAST)
    best = ranked[0]
    assert best.samples_per_s == pytest.approx(2000.0, rel=1e-6)
    assert best.efficiency == pytest.approx(1.0, rel=1e-6)
    assert get_schedule(best.schedule).accepts_early and best.teacher_early is not None
    assert best.balance == (1, 1)
    assert all(c.samples_per_s <= best.samples_per_s for c in ranked)
    assert get_schedule(per_schedule(ranked)[-1].schedule).is_pipeline


def test_a_memory_limit_drops_gpipe_but_keeps_1f1b(tiny):
    cal = load_calibration(tiny)
    free = plan(cal, 2, names=["gpipe", "1f1b"], link=FAST)
    gpipe = min(c.peak_gib for c in free if c.schedule == "gpipe")
    one_f = min(c.peak_gib for c in free if c.schedule == "1f1b")
    assert gpipe * 2**30 >= 32 * 10**6  # every sample's 4 MB activation on stage 0, whatever M
    assert one_f < gpipe
    limited = plan(cal, 2, memory_gib=(gpipe + one_f) / 2, names=["gpipe", "1f1b"], link=FAST)
    assert {c.schedule for c in limited} == {"1f1b"}
    assert all(c.peak_gib <= (gpipe + one_f) / 2 for c in limited)


def test_json_output_parses(tiny, capsys):
    assert main(["--calibration", str(tiny), "--gpus", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["samples_per_s"] >= max(c["samples_per_s"] for c in out["per_schedule"])
    assert len({c["schedule"] for c in out["per_schedule"]}) == len(out["per_schedule"])


def test_the_table_ranks(tiny, capsys):
    assert main(["--calibration", str(tiny), "--gpus", "2", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "samples/s" in lines[1] and "max GiB" in lines[1] and len(lines) == 5


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--gpus", "0"], "gpus must be"),
        (["--gpus", "2", "--memory-gib", "-1"], "memory limit"),
        (["--gpus", "2", "--memory-gib", "1e-9"], "no configuration"),
    ],
)
def test_bad_inputs_give_one_line_errors(tiny, capsys, args, words):
    assert main(["--calibration", str(tiny), *args]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and err.count("\n") == 1


def test_a_missing_file_gives_a_one_line_error(tmp_path, capsys):
    assert main(["--calibration", str(tmp_path / "none_fp32.json"), "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not found" in err and err.count("\n") == 1


def test_gpus_below_one_is_refused(tiny):
    with pytest.raises(ValueError, match="gpus"):
        plan(load_calibration(tiny), 0)


def test_figures_come_from_the_full_window_and_lookahead_is_opt_in(tiny, tmp_path):
    ranked = plan(load_calibration(tiny), 2, link=FAST, max_lookahead=2)
    assert ranked and all(c.window in (WINDOW_BATCHES, None) for c in ranked)
    assert all(c.lookahead is None for c in ranked)  # a frozen teacher has no lookahead to choose
    data = json.loads(tiny.read_text())
    data.update(pair="byol_tiny", teacher_params_M=1.0, student_params_M=1.0)  # EMA, with weights
    path = tmp_path / "byol_tiny_fp32.json"
    path.write_text(json.dumps(data))
    cal = load_calibration(path)
    assert cal.teacher == "ema"
    assert all(c.lookahead is None for c in plan(cal, 2, link=FAST))
    found = plan(cal, 2, link=FAST, max_lookahead=2)
    staler = [c for c in found if c.lookahead == 2]
    assert staler and all(get_schedule(c.schedule).accepts_lookahead for c in staler)
    for c in staler:  # the same configuration at L = 1 keeps one teacher version fewer
        same = [
            o
            for o in found
            if o.lookahead is None
            and (o.schedule, o.microbatches, o.backward_pieces, o.partition)
            == (c.schedule, c.microbatches, c.backward_pieces, c.partition)
        ]
        assert same and c.peak_gib > same[0].peak_gib
    with pytest.raises(ValueError, match="max_lookahead"):
        plan(cal, 2, max_lookahead=0)


def test_hybrid_adds_dp_replicas_of_shorter_pipelines_known_by_hand(tiny, tmp_path, capsys):
    data = json.loads(tiny.read_text())
    data.update(student_params_M=1.0, teacher_params_M=1.0)
    path = tmp_path / "kd_tiny_fp32.json"
    path.write_text(json.dumps(data))
    cal = load_calibration(path)
    # 4 GPUs, 2 blocks: no single pipeline fits, ddp does; without --hybrid nothing else
    assert {(c.schedule, c.dp) for c in plan(cal, 4, link=FAST)} == {("ddp", 1)}
    mixed = plan(cal, 4, link=FAST, hybrid=True)
    hybrid = [c for c in mixed if c.dp == 2]
    assert hybrid and all(c.gpus == 4 and c.stages == 2 and len(c.stage_mem_gib) == 2 for c in hybrid)
    # 2 replicas of 4 samples each: every stage has 2 ms of work a step, which a schedule that
    # fills every bubble runs back to back (a free link): 8 samples / 2 ms
    assert max(c.samples_per_s for c in hybrid) == pytest.approx(4000.0, rel=1e-6)
    assert main(["--calibration", str(path), "--gpus", "4", "--hybrid"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert header.split()[:3] == ["#", "schedule", "dp"]
