"""A partition's work split over its stages as the stages timed whole say: what the timing
reports, and how the split moves each kind's total between stages and nothing else."""

import pytest
import torch
from torch import nn

import core.stage_timing as stage_timing
from core.profile import BlockCosts
from core.stage_timing import split_by_stage, stage_times
from tests.core.toy import DIM, ToyTask, make_batches

CPU = torch.device("cpu")
NOW = [0.0]  # the fake clock, in ms (module level: models are copied, a clock held by them would be too)


class _Tick(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, backward_ms):
        ctx.backward_ms = backward_ms
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        NOW[0] += ctx.backward_ms
        return grad, None


class _Clocked(nn.Module):
    """A block whose forward costs ``forward_ms`` and backward ``backward_ms`` on the fake clock."""

    def __init__(self, forward_ms, backward_ms):
        super().__init__()
        self.linear = nn.Linear(DIM, DIM)
        self.forward_ms, self.backward_ms = forward_ms, backward_ms

    def forward(self, x):
        NOW[0] += self.forward_ms
        return _Tick.apply(self.linear(x), self.backward_ms)


class _ClockedTask(ToyTask):
    """The toy KD pair with blocks of known costs: student forwards 1, 2, 3, 4 and backwards 10,
    20, 30, 40; teacher forwards 5, 6, 7, 8, 9, 10."""

    def __init__(self):
        super().__init__("frozen", bn=False, steps=1)

    def build_student(self):
        return [_Clocked(f, 10.0 * f) for f in (1.0, 2.0, 3.0, 4.0)]

    def build_teacher(self, student):
        return [_Clocked(t, 0.0) for t in (5.0, 6.0, 7.0, 8.0, 9.0, 10.0)]


def test_each_stage_is_timed_whole_per_unit_and_per_kind(monkeypatch):
    monkeypatch.setattr(stage_timing.time, "perf_counter", lambda: NOW[0] / 1e3)
    times = stage_times(_ClockedTask(), make_batches(1)[0], 3, [1, 3], [4, 2], CPU, repeats=2)
    # per unit: stage 0 runs teacher blocks 0-3 and student block 0, stage 1 the rest
    assert [pytest.approx(t) for t in times] == [(26.0, 1.0, 10.0), (19.0, 9.0, 90.0)]


def test_a_partition_pair_of_different_stage_counts_is_refused():
    with pytest.raises(ValueError, match="differ in stages"):
        stage_times(_ClockedTask(), make_batches(1)[0], 1, [2, 2], [6], CPU)


def _costs():
    return BlockCosts(
        samples=4,
        teacher_fwd=[1.0, 1.0, 2.0],
        student_fwd=[1.0, 3.0, 2.0, 2.0],
        student_bwd=[2.0, 2.0, 4.0, 4.0],
        teacher_bytes=[1.0] * 3,
        student_bytes=[1.0] * 4,
        loss_ms=0.5,
        opt_ms=[0.1] * 4,
        param_bytes=[1.0] * 4,
        student_bwd_input=[2.0, 1.0, 2.0, 2.0],
        student_bwd_split=[2.0, 3.0, 5.0, 5.0],
    )


def test_the_split_gives_each_stage_its_timed_share_of_each_total_and_keeps_the_rest():
    costs = _costs()
    # timed whole: teacher 1 : 3 (profile 2 : 2), student forward 1 : 1 (profile 4 : 4), backward
    # 1 : 3 (profile 4 : 8)
    split = split_by_stage(costs, [2, 2], [2, 1], [(1.0, 5.0, 3.0), (3.0, 5.0, 9.0)])
    assert split.teacher_fwd == pytest.approx([0.5, 0.5, 3.0])
    assert split.student_fwd == pytest.approx(costs.student_fwd)
    # 12 in all, 3 : 9: stage 0 x 0.75, stage 1 x 9 / 8
    assert split.student_bwd == pytest.approx([1.5, 1.5, 4.5, 4.5])
    assert split.student_bwd_input == pytest.approx([1.5, 0.75, 2.25, 2.25])
    assert split.student_bwd_split == pytest.approx([1.5, 2.25, 5.625, 5.625])
    for field in ("teacher_fwd", "student_fwd", "student_bwd"):
        assert sum(getattr(split, field)) == pytest.approx(sum(getattr(costs, field)))
    assert (split.loss_ms, split.opt_ms, split.student_bytes) == (
        costs.loss_ms,
        costs.opt_ms,
        costs.student_bytes,
    )


def test_one_stage_or_a_stage_without_work_of_a_kind_keeps_the_profile():
    costs = _costs()
    assert split_by_stage(costs, [4], [3], [(9.0, 9.0, 9.0)]) == costs
    idle = BlockCosts(**{**costs.to_dict(), "teacher_fwd": [0.0, 0.0, 2.0]})
    split = split_by_stage(idle, [2, 2], [2, 1], [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0)])
    assert split.teacher_fwd == pytest.approx([0.0, 0.0, 2.0])


def test_the_split_needs_one_timing_per_stage():
    with pytest.raises(ValueError, match="stage times for 1 stages"):
        split_by_stage(_costs(), [2, 2], [2, 1], [(1.0, 1.0, 1.0)])
