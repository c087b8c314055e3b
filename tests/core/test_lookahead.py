"""Teacher lookahead L (staleness as a knob): the tspipe family's filling teacher forwards run L
mini-batches ahead, so an EMA teacher serves mini-batch b with version max(0, b - L)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.action import Action, Op
from core.config import PipelineConfig
from core.cost_model import unit_costs
from core.overrides import apply_overrides
from core.runtime.versions import TeacherVersions
from core.schedules import Program, build_schedule, get_schedule, schedules, window_batches
from core.simulate import simulate
from core.validate import validate
from tests.core.inprocess import fp64_threads_and_reference
from tests.core.test_runtime_dist import relative_difference

AHEAD = [s.name for s in schedules("pipeline") if s.accepts_lookahead]
OTHERS = [s.name for s in schedules("pipeline") if not s.accepts_lookahead]


def test_the_tspipe_family_takes_a_lookahead():
    assert set(AHEAD) == {"tspipe", "tspipe-zb", "tspipe-zbh1"} and OTHERS


@pytest.mark.parametrize("name", AHEAD)
def test_lookahead_one_is_the_schedule_itself(name):
    for stages, micro in ((1, 1), (2, 2), (3, 4)):
        plain = build_schedule(name, stages, micro, "ema", 4, views=2)
        ahead = build_schedule(name, stages, micro, "ema", 4, views=2, lookahead=1)
        assert ahead.lowered == plain.lowered and ahead.staleness == plain.staleness == 1


@pytest.mark.parametrize("name", AHEAD)
@pytest.mark.parametrize("teacher", ["ema", "frozen"])
def test_every_lookahead_validates(name, teacher):
    for lookahead in (0, 1, 2, 3):
        for stages in (1, 2, 3, 4):
            for micro in (1, 2, 3):
                for batches in (1, 2, 5):
                    built = build_schedule(name, stages, micro, teacher, batches, lookahead=lookahead)
                    validate(built)  # the version rule with staleness L, no deadlock
                    assert built.staleness == (lookahead if teacher == "ema" else 0)


@pytest.mark.parametrize("name", AHEAD)
def test_the_teacher_runs_lookahead_batches_ahead(name):
    built = build_schedule(name, 2, 2, "ema", 6, lookahead=2)
    stage0 = list(built.compute[0])
    first_sf = next(i for i, a in enumerate(stage0) if a.op == Op.SF)
    assert {a.batch for a in stage0[:first_sf]} == {0, 1}  # the prologue: batches 0 .. L - 1
    opt0 = next(i for i, a in enumerate(stage0) if a.op == Op.OPT)
    assert {a.batch for a in stage0[first_sf:opt0] if a.op == Op.TF} == {2}
    exact = build_schedule(name, 2, 2, "ema", 3, lookahead=0)
    for actions in exact.compute:  # L = 0: a step's own teacher forwards come first
        for b in range(3):
            tf = [i for i, a in enumerate(actions) if a.op == Op.TF and a.batch == b]
            sf = [i for i, a in enumerate(actions) if a.op == Op.SF and a.batch == b]
            assert max(tf) < min(sf)


@pytest.mark.parametrize("name", AHEAD)
@pytest.mark.parametrize("lookahead", [0, 2, 3])
def test_program_unrolls_to_the_full_schedule(name, lookahead):
    for steps in (1, 2, 3, 4, 5, 8):
        for start in (0, 4):
            program = Program.build(name, 3, 2, "ema", steps, views=2, start=start, lookahead=lookahead)
            full = build_schedule(name, 3, 2, "ema", steps, views=2, lookahead=lookahead)
            for s in range(3):
                got = [a for b in program.batches() for a in program.segment(s, b)]
                want = [Action(a.stage, a.op, a.batch + start, a.microbatch, a.part) for a in full.lowered[s]]
                assert got == want


def test_configs_check_the_lookahead():
    assert PipelineConfig("tspipe", 2, 2, teacher_lookahead=0).teacher_lookahead == 0
    with pytest.raises(ValueError, match="takes no teacher_lookahead"):
        PipelineConfig("gpipe", 2, 2, teacher_lookahead=1)
    with pytest.raises(ValueError, match=">= 0"):
        PipelineConfig("tspipe", 2, 2, teacher_lookahead=-1)
    with pytest.raises(ValueError, match="integer"):
        PipelineConfig("tspipe", 2, 2, teacher_lookahead=True)
    with pytest.raises(ValueError, match="no teacher lookahead"):
        build_schedule("gpipe", 2, 2, "ema", 2, lookahead=1)
    with pytest.raises(ValueError, match="lookahead must be"):
        build_schedule("tspipe", 2, 2, "ema", 2, lookahead=-2)
    assert apply_overrides(PipelineConfig("tspipe", 2, 2), ["teacher_lookahead=2"]).teacher_lookahead == 2
    assert (
        get_schedule("tspipe").staleness("ema", 3) == 3 and get_schedule("tspipe").staleness("frozen", 3) == 0
    )
    assert get_schedule("gpipe").staleness("ema", 3) == 0


@pytest.mark.parametrize("name", AHEAD)
@pytest.mark.parametrize("lookahead", [0, 2])
def test_lookahead_equals_the_reference_in_threads(name, lookahead):
    config = PipelineConfig(name, 3, 2, teacher_lookahead=lookahead, max_grad_norm=0.05)
    got, want = fp64_threads_and_reference(config, 5, lookahead)
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12


def test_versions_keep_the_last_lookahead_teachers_for_a_resume():
    teacher = nn.Linear(2, 2)
    versions = TeacherVersions(ema=True, staleness=2)
    versions.keep_at = lambda step: step % 3 == 2  # checkpoints after steps 2 and 5
    seen = {}
    for step in range(6):
        seen[versions.version] = copy.deepcopy(teacher.state_dict())
        versions.before_update(step, teacher)
        with torch.no_grad():
            teacher.weight.add_(1.0)  # one update: a new version
        versions.advance(step)
        if step == 2:
            saved = versions.state()
    assert sorted(saved["previous_teachers"]) == [1, 2]
    assert torch.equal(saved["previous_teacher"]["weight"], seen[2]["weight"])
    assert sorted(versions.state()["previous_teachers"]) == [4, 5]

    resumed = TeacherVersions(ema=True, staleness=2)
    resumed.load({"teacher_version": 3, **saved})
    now = nn.Linear(2, 2)
    now.load_state_dict(seen[2])
    with torch.no_grad():
        now.weight.add_(1.0)
    resumed.start(now, 3)
    for batch, version in ((3, 1), (4, 2)):  # the resumed prologue reads versions 1 and 2
        assert torch.equal(resumed.teacher_for(batch, now).weight, seen[version]["weight"])
    assert resumed.teacher_for(5, now) is now

    lacking = TeacherVersions(ema=True, staleness=2)
    lacking.load({"teacher_version": 3, "previous_teachers": {1: now.state_dict()}})
    with pytest.raises(ValueError, match="version 2"):
        lacking.start(now, 3)


def test_an_old_checkpoint_with_one_previous_teacher_still_resumes_staleness_one():
    teacher = nn.Linear(2, 2)
    versions = TeacherVersions(ema=True, staleness=1)
    versions.load({"teacher_version": 4, "previous_teacher": teacher.state_dict()})
    assert sorted(versions.previous_states) == [3]
    versions.start(teacher, 4)
    assert versions.teacher_for(4, teacher) is not teacher


@pytest.mark.parametrize("name", AHEAD)
@pytest.mark.parametrize("lookahead", [0, 1, 2, 4])
def test_the_simulated_steady_state_counts_only_full_steps(name, lookahead):
    """The last L steps of a window have no teacher forwards L ahead left to run: the simulator
    leaves them out, so every measured step does a whole step's work, whatever L (counting them
    made L = 2 look 11-13 % faster on the KD calibration at 8 stages), and the window grows by
    L - 1 to keep as many."""
    costs = unit_costs(4)
    built = build_schedule(name, 4, 4, "ema", window_batches(8, lookahead), 2, lookahead=lookahead)
    result = simulate(built, costs, 4)
    busy = result.step_ms * (1 - result.bubble_fraction) * 4
    assert busy == pytest.approx(sum(costs.stage_work(4)))
    assert window_batches(8, lookahead) == 8 + max(0, lookahead - 1)
