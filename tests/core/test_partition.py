"""Partitioner: optimal balance, checks, EMA tying, calibration files."""

import itertools
import random

import pytest

from core.calibration import load_calibration
from core.partition import (
    balance_by_cost,
    check_balance,
    plan_partition,
    stage_costs,
    uniform_balance,
)


def brute_force(costs, stages):
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = [0, *cuts, n]
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


def test_balance_by_cost_is_optimal_on_random_costs():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        stages = rng.randint(1, n)
        costs = [rng.uniform(0.1, 5.0) for _ in range(n)]
        balance = balance_by_cost(costs, stages)
        check_balance(balance, n, stages)
        assert max(stage_costs(costs, balance)) == pytest.approx(brute_force(costs, stages))


def test_uniform_balance():
    assert uniform_balance(10, 4) == [3, 3, 2, 2]


FILES = [
    "byol_resnet18_bf16.json",
    "byol_resnet50_bf16.json",
    "mocov3_vit_base_halfblocks_bf16.json",
    "mocov3_vit_large_halfblocks_bf16.json",
    "kd_resnet152_to_resnet50_bf16.json",
    "distil_bertlarge_to_6l_halfblocks_bf16.json",
]


@pytest.mark.parametrize("name", FILES)
def test_auto_balance_never_worse_than_uniform(calibration_dir, name):
    cal = load_calibration(calibration_dir / name)
    student = [f + b for f, b in zip(cal.student_fwd, cal.student_bwd)]
    for stages in (2, 4, 8, 16):
        if stages > min(len(student), len(cal.teacher_fwd)):
            continue
        auto = plan_partition(stages, student, cal.teacher_fwd, cal.teacher)
        uni_s = uniform_balance(len(student), stages)
        uni_t = uni_s if cal.teacher == "ema" else uniform_balance(len(cal.teacher_fwd), stages)

        def worst(s_bal, t_bal):
            return max(
                a + b for a, b in zip(stage_costs(student, s_bal), stage_costs(cal.teacher_fwd, t_bal))
            )

        assert worst(auto.student, auto.teacher) <= worst(uni_s, uni_t) + 1e-9
        if cal.teacher == "ema":
            assert auto.student == auto.teacher and auto.tied


def test_ema_teacher_is_tied_and_predictor_joins_the_last_stage():
    part = plan_partition(2, [1, 1, 1, 1, 5], [1, 1, 1, 1], "ema", student_extra=1)
    assert part.teacher == (3, 1) and part.student == (3, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stages=3, balance=[2, 2]), "has 2 entries; need one per stage"),
        (dict(stages=2, balance=[2, 1]), "sums to 3 but the student has 4 blocks"),
        (dict(stages=2, balance=[4, 0]), "at least one block"),
        (dict(stages=5), "5 stages but the student has only 4 blocks"),
        (dict(stages=2, balance=[2, 2], teacher_balance=[1, 3]), "must be split like the student"),
    ],
)
def test_bad_partitions_raise_value_error(kwargs, message):
    stages = kwargs.pop("stages")
    with pytest.raises(ValueError, match=message):
        if "balance" in kwargs or "teacher_balance" in kwargs:
            plan_partition(stages, [1, 1, 1, 1], [1, 1, 1, 1], "ema", **kwargs)
        else:
            check_balance(uniform_balance(4, 4), 4, stages)


def test_frozen_teacher_is_balanced_on_its_own():
    # a heavy first teacher block: the teacher split differs from the student's
    part = plan_partition(2, [1, 1, 1, 1], [6, 1, 1, 1, 1, 1], "frozen")
    assert not part.tied and part.teacher == (1, 5) and sum(part.student) == 4
