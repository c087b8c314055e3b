"""Simulator: pinned step times on unit costs, calibration results, CLI."""

import itertools
import json
import math

import pytest

from core.calibration import load_calibration
from core.cost_model import CostModel, unit_costs
from core.link import Link
from core.metrics import text_timeline
from core.paper_scale import simulate_calibration
from core.schedules import build_schedule
from core.simulate import main, simulate


def run(name, stages, micro, batches=8, views=1, loss_opt=0.0, pieces=None):
    built = build_schedule(name, stages, micro, "ema", batches, pieces, views=views)
    return simulate(built, unit_costs(stages, loss_opt), batch_samples=micro * views)


# ---- unit costs: teacher forward 1, student forward 1, backward 2 ----------------------------


@pytest.mark.parametrize("stages, units", [(1, 1), (2, 2), (4, 4), (4, 8), (8, 3)])
def test_gpipe_bubble_matches_its_docstring_formula(stages, units):
    result = run("gpipe", stages, units)
    fill = 3 * (stages - 1)
    assert result.step_ms == pytest.approx(4 * units + fill)
    assert result.bubble_fraction == pytest.approx(fill / (4 * units + fill))


def test_1f1b_has_the_bubble_of_gpipe():
    assert run("1f1b", 4, 4).step_ms == pytest.approx(run("gpipe", 4, 4).step_ms)


def test_mp_runs_one_stage_at_a_time():
    # one micro-batch of two views: each stage's work (2 x 4 units), one stage after another
    result = run("mp", 4, 1, views=2)
    assert result.step_ms == pytest.approx(4 * 8)
    assert result.bubble_fraction == pytest.approx(0.75)


def test_sequential_has_no_bubble():
    result = run("sequential", 1, 4, loss_opt=0.5)
    assert result.step_ms == pytest.approx(16 + 1.0)
    assert result.bubble_fraction == pytest.approx(0.0)


@pytest.mark.parametrize("stages", [2, 3, 4, 6, 8])
def test_tspipe_steady_state_never_idles_when_teacher_work_covers_the_bubble(stages):
    units = 2 * (stages - 1)
    result = run("tspipe", stages, units)
    assert result.step_ms == pytest.approx(4 * units)
    assert result.bubble_fraction == pytest.approx(0.0, abs=1e-12)
    assert result.efficiency == pytest.approx(1.0)
    # and beyond that point it stays bubble-free
    assert run("tspipe", stages, units + 3).bubble_fraction == pytest.approx(0.0, abs=1e-12)


def test_tspipe_with_too_few_microbatches_leaves_the_remaining_gap():
    # N = 4, U = 4: the fill needs 2 (N - 1) = 6 teacher slots, only 4 exist: 2 slots idle
    result = run("tspipe", 4, 4)
    assert result.step_ms == pytest.approx(16 + 2)


def test_tspipe_beats_gpipe_on_unit_costs():
    for stages in (2, 4, 8):
        assert run("tspipe", stages, stages).step_ms < run("gpipe", stages, stages).step_ms


@pytest.mark.parametrize("stages, units", [(2, 2), (4, 4), (4, 8), (8, 3)])
def test_a_split_backward_shortens_the_drain_by_the_weight_halves(stages, units):
    # only the input half (1 of 2) crosses back; stage 0 runs whole backwards
    assert run("zb", stages, units).step_ms == pytest.approx(
        run("1f1b", stages, units).step_ms - (stages - 1)
    )


@pytest.mark.parametrize("stages, units", [(2, 2), (4, 4), (4, 8), (8, 3), (8, 8), (8, 14)])
def test_tspipe_zb_is_never_slower_than_tspipe_and_faster_with_few_units(stages, units):
    tspipe, zb = run("tspipe", stages, units).step_ms, run("tspipe-zb", stages, units).step_ms
    assert zb <= tspipe + 1e-9
    if units < 2 * (stages - 1):  # tspipe's teacher work does not cover its bubble
        assert zb < tspipe


@pytest.mark.parametrize("pieces", [1, 2])
def test_tspipe_zbh1_is_never_faster_than_tspipe_zb_on_unit_costs(pieces):
    """Its docstring's claim: with equal costs a flushed student leaves the teacher forwards no
    less room; what tspipe-zbh1 gains needs real costs (``tests/core/test_calibration.py``)."""
    ratios = []
    for stages, units in itertools.product(range(2, 9), (1, 2, 3, 4, 6, 8, 12, 16)):
        costs = unit_costs(stages)
        flushed = simulate(build_schedule("tspipe-zb", stages, units, "ema", 6, pieces), costs, units)
        own = simulate(build_schedule("tspipe-zbh1", stages, units, "ema", 6, pieces), costs, units)
        assert own.step_ms >= flushed.step_ms - 1e-9
        ratios.append(flushed.step_ms / own.step_ms)
    assert 0.95 < sum(ratios) / len(ratios) < 0.99  # 2.5 % slower on average over both piece counts


def test_split_costs_follow_the_weight_share():
    built = build_schedule("zb", 2, 1, "frozen", 1)
    costs = CostModel(
        teacher_fwd=(1.0, 1.0),
        student_fwd=(1.0, 1.0),
        student_bwd=(4.0, 4.0),
        teacher_bytes=(0.0, 0.0),
        student_bytes=(0.0, 0.0),
        opt_ms=(0.0, 0.0),
        link=Link(gbps=1.0, latency_us=0.0),
        weight_share=0.25,
    )
    durations = {r.action: r.end_ms - r.start_ms for r in simulate(built, costs, 1).records}
    assert durations["1SB0"] == pytest.approx(3.0) and durations["1SW0"] == pytest.approx(1.0)
    # stage 0 sends no input gradient: its input half is the whole backward
    assert durations["0SB0"] == pytest.approx(4.0) and durations["0SW0"] == 0.0
    with pytest.raises(ValueError, match="weight_share"):
        CostModel(**{**costs.__dict__, "weight_share": 1.5})


def _mp_over(link: Link) -> float:
    """Step time of one mini-batch of mp on two stages whose stage 0 sends 1 MB messages."""
    costs = CostModel(
        teacher_fwd=(1.0, 1.0),
        student_fwd=(1.0, 1.0),
        student_bwd=(2.0, 2.0),
        teacher_bytes=(1e6, 0.0),
        student_bytes=(1e6, 0.0),
        opt_ms=(0.0, 0.0),
        link=link,
    )
    return simulate(build_schedule("mp", 2, 1, "ema", 1, views=1), costs, 1).step_ms


def test_transfers_add_latency_and_bandwidth_time():
    step = _mp_over(Link(gbps=1.0, latency_us=500.0))  # 1 MB at 1 GB/s = 1 ms, plus 0.5 ms
    # stage 0: TF [0, 1], SF [1, 2]; the teacher message arrives at 2.5, the student one queues
    # behind it on the link and arrives at 4; stage 1 (receives hoisted) runs TF, SF, B [4, 8];
    # the gradient arrives at 9.5; stage 0's backward ends at 11.5
    assert step == pytest.approx(11.5)


def test_a_stage_resumes_slower_after_waiting_for_a_message():
    # every wait costs its stage 2 ms more (a time constant far below any wait)
    step = _mp_over(Link(gbps=1.0, latency_us=500.0, wake_ms=2.0, wake_tau_ms=1e-6))
    # as above, but stage 1's teacher receive waits (until 2.5) and resumes at 4.5, so the
    # student message (at 4) has no wait; compute [4.5, 8.5], the gradient arrives at 10, stage 0
    # waited for it and resumes at 12: its backward ends at 14
    assert step == pytest.approx(14.0)
    assert Link(wake_ms=2.0, wake_tau_ms=10.0).wake_penalty_ms(10.0) == pytest.approx(
        2.0 * (1 - math.exp(-1))
    )
    assert Link(wake_ms=2.0).wake_penalty_ms(0.0) == 0.0 == Link().wake_penalty_ms(50.0)
    with pytest.raises(ValueError, match="wake"):
        Link(wake_tau_ms=0.0)


@pytest.mark.parametrize("student", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages, micro, views", [(2, 1, 1), (2, 4, 2), (3, 2, 1), (4, 4, 1), (4, 2, 2)])
def test_torch_messaging_only_adds_waits(student, stages, micro, views):
    """The torch peer's messaging (receives posted on demand, sends waited for at each change of
    work) replays every shape the peer runs without a deadlock and is never faster."""
    built = build_schedule(student, stages, micro, "ema", 8, 1, views=views)
    link = Link(gbps=1.0, latency_us=200.0)
    costs = CostModel(
        teacher_fwd=(1.0,) * stages,
        student_fwd=(1.0,) * stages,
        student_bwd=(2.0,) * stages,
        teacher_bytes=(1e5,) * stages,
        student_bytes=(1e5,) * stages,
        loss_ms=0.0,
        opt_ms=(0.0,) * stages,
        link=link,
    )
    ahead = simulate(built, costs, micro * views)
    torch_like = simulate(built, costs, micro * views, torch_p2p=True)
    assert torch_like.step_ms >= ahead.step_ms - 1e-9
    if micro * views > 1:  # a message posted late costs its transfer on the critical path
        assert torch_like.step_ms > ahead.step_ms


def test_text_timeline_draws_idle():
    result = run("gpipe", 2, 1, batches=1)
    text = text_timeline(result.records, 2)
    assert text.splitlines()[0].startswith("stage 0: T0F0")
    assert "." in text


# ---- calibration files -----------------------------------------------------------------------


@pytest.fixture
def byol50(calibration_dir):
    """The schedule alone: the linear model (the realistic one adds the micro-batch penalty)."""
    return load_calibration(calibration_dir / "byol_resnet50_bf16.json", "linear")


def test_calibration_is_read_as_it_is(byol50):
    assert byol50.batch == 256 and byol50.microbatch == 32 and byol50.views == 2
    assert byol50.teacher == "ema" and len(byol50.teacher_fwd) == 18
    assert byol50.student_out[0] == 64 * 56 * 56


@pytest.mark.parametrize("stages", [4, 8])
def test_tspipe_leaves_almost_no_bubble_beyond_block_granularity(byol50, stages):
    link = Link(450.0)
    ts, _, _ = simulate_calibration(byol50, "tspipe", stages, stages, link)
    assert ts.efficiency >= 0.97 * ts.balance_cap
    for other in ("gpipe", "1f1b"):
        res, _, _ = simulate_calibration(byol50, other, stages, stages, link)
        assert ts.efficiency > res.efficiency
        assert res.balance_cap == pytest.approx(ts.balance_cap)


def test_balance_cap_reflects_block_granularity(byol50):
    caps = [simulate_calibration(byol50, "gpipe", n, n)[0].balance_cap for n in (4, 8)]
    assert caps[0] == pytest.approx(0.92, abs=0.01) and caps[1] == pytest.approx(0.81, abs=0.01)


def test_sweep_file_reports_a_microbatch_penalty(calibration_dir):
    sweep = load_calibration(calibration_dir / "byol_resnet50_mbsweep_bf16.json")
    assert sweep.microbatch_penalty(8) > sweep.microbatch_penalty(32) > 1.0
    assert sweep.microbatch_penalty(256) == pytest.approx(1.0)
    k = sweep.scales[0]  # scaled so the whole teacher at the full batch is the measured one
    t8, _, _ = sweep.block_costs(8)
    assert t8 == pytest.approx([x * k for x in sweep.sweep[8][0]])
    t24, _, _ = sweep.block_costs(24)  # halfway between the 16 and 32 points
    assert t24[0] == pytest.approx(k * (sweep.sweep[16][0][0] + sweep.sweep[32][0][0]) / 2)
    assert sweep.with_model("linear").microbatch_penalty(8) is None


def test_cli_json(calibration_dir, capsys):
    code = main(
        [
            "--calibration",
            str(calibration_dir / "byol_resnet50_bf16.json"),
            "--stages",
            "4",
            "--microbatches",
            "4",
            "--schedule",
            "tspipe",
            "--format",
            "json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "schedule",
        "stages",
        "microbatches",
        "step_ms",
        "samples_per_s",
        "efficiency",
        "bubble_fraction",
        "bound_samples_per_s",
        "balance_cap",
    ):
        assert key in out
    assert out["simulated"] is True and out["schedule"] == "tspipe"


def test_cli_timeline_gantt_and_errors(calibration_dir, tmp_path, capsys):
    from analysis.timeline import main as draw

    records, png = tmp_path / "t.jsonl", tmp_path / "g.png"
    args = ["--calibration", str(calibration_dir / "byol_resnet18_bf16.json"), "--stages", "2"]
    assert main([*args, "--microbatches", "2", "--schedule", "gpipe", "--timeline", str(records)]) == 0
    assert draw([str(records), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert main([*args, "--microbatches", "2", "--schedule", "nope"]) == 2
    assert "not a simulated pipeline schedule" in capsys.readouterr().err
    assert main([*args[:2], "--stages", "40", "--microbatches", "2", "--schedule", "gpipe"]) == 2
    capsys.readouterr()
    assert main([*args, "--microbatches", "0", "--schedule", "gpipe"]) == 2
    assert "microbatches must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main([*args[:2], "--stages", "0", "--microbatches", "2", "--schedule", "gpipe"]) == 2
    assert "stages must be an integer >= 1, got 0" in capsys.readouterr().err
