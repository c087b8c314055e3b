"""Cost-aware teacher placement: per-stage early teacher forwards for the tspipe family, chosen
on the simulator, checked, and run by the runtime exactly like the reference."""

from __future__ import annotations

from dataclasses import replace

import pytest

import core.schedules.teacher_fill as teacher_fill
from core.config import PipelineConfig
from core.cost_model import unit_costs
from core.overrides import apply_overrides
from core.placement import monotone, place_teacher_forwards
from core.schedules import build_schedule, get_schedule, schedules
from core.schedules.teacher_fill import early_counts
from core.simulate import simulate
from core.validate import validate
from tests.core.inprocess import fp64_threads_and_reference
from tests.core.test_runtime_dist import relative_difference

EARLY = [s.name for s in schedules("pipeline") if s.accepts_early]
OTHERS = [s.name for s in schedules("pipeline") if not s.accepts_early and s.stages is None]


def test_some_schedules_take_early_counts():
    assert EARLY and OTHERS


@pytest.mark.parametrize("name", EARLY)
def test_none_keeps_the_uniform_rule(name):
    plain = build_schedule(name, 4, 4, "ema", 3)
    given = build_schedule(name, 4, 4, "ema", 3, early=get_schedule(name).uniform_early(4, 4, 2))
    assert plain.compute == given.compute


def test_a_schedule_takes_counts_exactly_when_it_has_a_rule_for_them():
    assert early_counts(4, 4, 2) == get_schedule("tspipe").uniform_early(4, 4, 2) == (4, 4, 2, 0)
    assert get_schedule("tspipe-zbh1").uniform_early(4, 4, 2) == (4, 4, 2, 0)
    assert get_schedule("tspipe-zbh1").uniform_early(4, 8, 1) == (6, 4, 2, 0)  # 2 (N - 1 - s)
    with pytest.raises(ValueError, match="no per-stage early"):
        get_schedule(OTHERS[0]).uniform_early(4, 4, 2)
    spec = get_schedule("tspipe")
    with pytest.raises(ValueError, match="early_rule"):
        type(spec)("x", "no rule", spec.build, accepts_early=True)


def test_uniform_costs_give_the_uniform_counts():
    counts = place_teacher_forwards(unit_costs(4), EARLY[0], 4, 4, batch_samples=4)
    assert counts == early_counts(4, 4, 2)


@pytest.mark.parametrize("name", EARLY)
def test_a_heavy_teacher_gets_counts_that_simulate_faster(name):
    costs = unit_costs(4)
    heavy = replace(costs, teacher_fwd=tuple(3 * f for f in costs.student_fwd))
    counts = place_teacher_forwards(heavy, name, 4, 4, batch_samples=4)
    assert counts != get_schedule(name).uniform_early(4, 4, 2)
    assert list(counts) == sorted(counts, reverse=True) and all(0 <= k <= 4 for k in counts)
    uniform = build_schedule(name, 4, 4, "ema", 8)
    placed = build_schedule(name, 4, 4, "ema", 8, early=counts)
    validate(placed)
    assert simulate(placed, heavy, 4).step_ms < simulate(uniform, heavy, 4).step_ms


@pytest.mark.parametrize(
    ("early", "words"),
    [
        ((4, 4, 2), "one per stage"),
        ((5, 4, 2, 0), "0..4"),
        ((4, -1, 0, 0), "0..4"),
        ((1, 2, 0, 0), "increase"),
    ],
)
def test_bad_counts_are_refused(early, words):
    with pytest.raises(ValueError, match=words):
        build_schedule(EARLY[0], 4, 4, "ema", 3, early=early)


def test_an_increasing_count_would_deadlock(monkeypatch):
    # without the check, the validator's dry run finds the deadlock the check refuses
    monkeypatch.setattr(teacher_fill, "check_early", lambda early, *args: tuple(early))
    with pytest.raises(ValueError):
        validate(build_schedule(EARLY[0], 3, 2, "ema", 3, early=(0, 1, 0)))


def test_other_schedules_and_configs_refuse_counts():
    with pytest.raises(ValueError, match="early"):
        build_schedule(OTHERS[-1], 2, 2, "ema", 3, early=(1, 0))
    with pytest.raises(ValueError, match="teacher_early"):
        PipelineConfig(OTHERS[-1], 2, 2, teacher_early=(1, 0))
    with pytest.raises(ValueError, match="one per stage"):
        PipelineConfig(EARLY[0], 3, 2, teacher_early=(1, 0))
    with pytest.raises(ValueError, match=">= 0"):
        PipelineConfig(EARLY[0], 2, 2, teacher_early=(1, -1))
    assert PipelineConfig(EARLY[0], 2, 2, teacher_early=(0, 1)).teacher_early == (0, 1)  # frozen: staggered
    with pytest.raises(ValueError, match="must not increase"):  # an EMA teacher's would deadlock
        build_schedule(EARLY[0], 2, 2, "ema", 3, early=(0, 1))
    config = apply_overrides(PipelineConfig(EARLY[0], 3, 4), ["teacher_early=3,1,0"])
    assert config.teacher_early == (3, 1, 0)


def test_monotone():
    assert monotone([5, 6, 1, 2], 4) == (4, 4, 1, 1)


@pytest.mark.parametrize("name", EARLY)
def test_non_uniform_counts_equal_the_reference_in_threads(name):
    steps, micro, early = 3, 4, (3, 1, 0)
    assert early != get_schedule(name).uniform_early(3, micro, 2)
    config = PipelineConfig(name, 3, micro, teacher_early=early, max_grad_norm=0.05)
    got, want = fp64_threads_and_reference(config, steps, 1)
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12


def test_paper_scale_places_the_counts_and_records_them(calibration_dir):
    from core.calibration import load_calibration
    from core.link import Link
    from core.paper_scale import result_dict, simulate_calibration

    cal = load_calibration(calibration_dir / "kd_resnet152_to_resnet50_bf16.json", "linear")
    link = Link(450.0)
    uniform, built, _ = simulate_calibration(cal, EARLY[0], 4, 4, link, None, 2)
    placed, placed_built, partition = simulate_calibration(cal, EARLY[0], 4, 4, link, None, 2, early="auto")
    assert placed.samples_per_s > uniform.samples_per_s  # a teacher 3x the student's forward
    summary = result_dict(cal, placed_built, partition, placed, link)
    assert summary["teacher_early"] == list(placed_built.early) != list(early_counts(4, 4, 2))
    assert result_dict(cal, built, partition, uniform, link)["teacher_early"] == list(early_counts(4, 4, 2))
    with pytest.raises(ValueError, match="auto"):
        simulate_calibration(cal, EARLY[0], 4, 4, link, None, 2, early="cost")
