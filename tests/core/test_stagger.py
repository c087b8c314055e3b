"""A frozen teacher is staggered in the tspipe family: stage s runs the teacher forwards of
L + N - 1 - s mini-batches ahead, so no stage waits within a step for another's teacher
forwards. What the schedule, the unrolled program, the simulator, the placement and the memory
model make of it (the runtime's equivalence on 2 and 4 processes is in test_runtime_dist)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from core.action import Action, Op
from core.calibration import load_calibration
from core.cost_model import CostModel
from core.link import Link
from core.paper_scale import calibration_memory, simulate_calibration
from core.schedules import (
    Program,
    build_schedule,
    furthest_ahead,
    get_schedule,
    schedules,
    window_batches,
)
from core.schedules.teacher_fill import check_early, fill_ahead, staggered
from core.simulate import simulate
from core.validate import validate

AHEAD = [s.name for s in schedules("pipeline") if s.accepts_lookahead]


def test_a_frozen_teacher_runs_one_batch_further_ahead_per_stage_and_an_ema_one_does_not():
    assert fill_ahead(4, "frozen", 1) == (4, 3, 2, 1)
    assert fill_ahead(3, "frozen", 2) == (4, 3, 2)
    assert fill_ahead(4, "ema", 2) == (2, 2, 2, 2)  # one version per mini-batch on every stage
    assert fill_ahead(4, "frozen", 0) == (0, 0, 0, 0)  # L = 0 fills nothing
    assert furthest_ahead("tspipe", 4, "frozen") == 4 and furthest_ahead("tspipe", 4, "ema") == 1
    assert furthest_ahead("gpipe", 4, "frozen") == 0
    assert window_batches(8, 4) == 11 and window_batches(8, 0) == 8


@pytest.mark.parametrize(
    "name, stages, teacher, lookahead, want",
    [
        ("tspipe", 4, "frozen", None, True),
        ("tspipe-zb", 2, "frozen", 2, True),
        ("tspipe-zbh1", 3, "frozen", None, True),
        ("tspipe", 4, "ema", None, False),  # one version per mini-batch
        ("tspipe", 4, "frozen", 0, False),  # nothing fills
        ("tspipe", 1, "frozen", None, False),  # no stage to stagger against
        ("gpipe", 4, "frozen", None, False),  # fills nothing
    ],
)
def test_one_rule_says_which_schedules_are_staggered(name, stages, teacher, lookahead, want):
    built = build_schedule(name, stages, stages, teacher, 2, lookahead=lookahead)
    assert built.staggered is want
    if get_schedule(name).accepts_lookahead:
        assert staggered(stages, teacher, 1 if lookahead is None else lookahead) is want
        assert (len(set(fill_ahead(stages, teacher, 1 if lookahead is None else lookahead))) > 1) is want


@pytest.mark.parametrize("name", AHEAD)
def test_each_stage_fills_its_steps_with_its_own_batch_ahead(name):
    stages, batches = 4, 9
    built = build_schedule(name, stages, 2, "frozen", batches)
    validate(built)
    assert built.fill_ahead == 4 and built.staleness == 0
    for s, actions in enumerate(built.compute):
        ahead = stages - s
        opts = [i for i, a in enumerate(actions) if a.op == Op.OPT]
        first_sf = next(i for i, a in enumerate(actions) if a.op == Op.SF)
        assert {a.batch for a in actions[:first_sf]} == set(range(ahead))  # the prologue
        for b in range(batches):
            begin = opts[b - 1] if b else first_sf
            filled = {a.batch for a in actions[begin : opts[b]] if a.op == Op.TF}
            assert filled == ({b + ahead} if b + ahead < batches else set())


@pytest.mark.parametrize("name", AHEAD)
def test_staggered_schedules_validate_and_unroll(name):
    for stages in (1, 2, 3, 4):
        for micro in (1, 2, 3):
            for lookahead in (0, 1, 2):
                for batches in (1, 2, 7):
                    validate(build_schedule(name, stages, micro, "frozen", batches, lookahead=lookahead))
    for steps in (1, 3, 6, 9):
        for start in (0, 5):
            program = Program.build(name, 3, 2, "frozen", steps, views=2, start=start)
            full = build_schedule(name, 3, 2, "frozen", steps, views=2)
            for s in range(3):
                got = [a for b in program.batches() for a in program.segment(s, b)]
                want = [Action(a.stage, a.op, a.batch + start, a.microbatch, a.part) for a in full.lowered[s]]
                assert got == want


def test_staggered_early_counts_need_not_decrease():
    assert check_early((1, 3, 2), 3, 4, staggered=True) == (1, 3, 2)
    with pytest.raises(ValueError, match="must not increase"):
        check_early((1, 3, 2), 3, 4)
    built = build_schedule("tspipe", 3, 2, "frozen", 7, early=(1, 2, 2))
    validate(built)  # no deadlock: stage 1's teacher inputs came a step earlier
    with pytest.raises(ValueError, match="must not increase"):
        build_schedule("tspipe", 3, 2, "ema", 7, early=(1, 2, 2))


def random_costs(rng: random.Random, stages: int) -> CostModel:
    def draw(lo: float, hi: float) -> tuple[float, ...]:
        return tuple(rng.uniform(lo, hi) for _ in range(stages))

    return CostModel(
        teacher_fwd=draw(0.5, 4.0),
        student_fwd=draw(0.5, 2.0),
        student_bwd=draw(1.0, 4.0),
        teacher_bytes=draw(0.0, 1e6),
        student_bytes=draw(0.0, 1e6),
        opt_ms=draw(0.0, 1.0),
        loss_ms=rng.uniform(0.0, 1.0),
        link=Link(gbps=rng.uniform(1.0, 100.0), latency_us=rng.uniform(0.0, 50.0)),
    )


@pytest.mark.parametrize("name", AHEAD)
def test_the_stagger_only_removes_waits(name):
    """Same order on every stage, teacher inputs that arrived a step earlier: with the same
    costs no staggered step is longer than the unstaggered one (the EMA teacher's order)."""
    rng = random.Random(7)
    faster = 0
    for _ in range(12):
        stages, micro = rng.randint(2, 5), rng.randint(1, 6)
        costs = random_costs(rng, stages)
        steps = {}
        for teacher in ("ema", "frozen"):
            ahead = furthest_ahead(name, stages, teacher)
            built = build_schedule(name, stages, micro, teacher, window_batches(8, ahead), 2)
            steps[teacher] = simulate(built, costs, 8).step_ms
        assert steps["frozen"] <= steps["ema"] * (1 + 1e-9)
        faster += steps["frozen"] < steps["ema"] * (1 - 1e-3)
    assert faster  # and on some of these costs it is strictly shorter


def test_heavy_frozen_teachers_reach_the_balance_cap_at_four_stages(calibration_dir):
    """The KD pair of the H200 calibration, linear model, M = N = 4: the placed, staggered
    tspipe reaches the partition's cap (the unstaggered one stopped at 0.94 of it)."""
    cal = load_calibration(calibration_dir / "kd_resnet152_to_resnet50_bf16.json", "linear")
    result, built, _ = simulate_calibration(cal, "tspipe", 4, 4, Link(), backward_pieces=2, early="auto")
    assert built.fill_ahead == 4
    assert result.efficiency >= 0.99 * result.balance_cap


def test_teacher_activations_in_flight_are_counted(calibration_dir):
    cal = load_calibration(calibration_dir / "kd_resnet152_to_resnet50_bf16.json", "linear")
    _, built, part = simulate_calibration(cal, "tspipe", 4, 4, Link())
    assert built.staggered
    unflagged = dataclasses.replace(built, lookahead=0)  # the same actions, not staggered
    held = [p.bytes for p in calibration_memory(cal, built, part)]
    plain = [p.bytes for p in calibration_memory(cal, unflagged, part)]
    assert held[0] == plain[0]
    unit_samples, bf16 = cal.batch / 4, 2
    for s in range(1, 4):  # one mini-batch (4 units) of the previous stage's teacher output
        last = sum(part.teacher[:s]) - 1
        assert held[s] - plain[s] == pytest.approx(cal.teacher_out[last] * unit_samples * bf16 * 4)
