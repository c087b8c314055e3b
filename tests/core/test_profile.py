"""Per-block profiles: the input half of each backward is measured beside the whole, and sets
the weight share of a split backward in the cost model."""

import torch

from core.cost_model import stage_cost_model
from core.link import Link
from core.partition import Partition
from core.profile import fitted_costs, profile_blocks, step_costs_by_block
from tests.core.toy import ToyTask, make_batches, sgd


def test_the_input_half_of_each_backward_is_measured_and_fitted():
    task = ToyTask("frozen", True, 1)
    batch = make_batches(1)[0]
    costs = [profile_blocks(task, batch, m, sgd, torch.device("cpu"), repeats=3) for m in (1, 2)]
    for c in costs:
        blocks = len(c.student_bwd)
        assert len(c.student_bwd_input) == blocks
        assert c.student_bwd_input[0] == c.student_bwd[0]  # the first block's input needs no gradient
        assert all(0.0 <= i <= w for i, w in zip(c.student_bwd_input, c.student_bwd))
        # a split backward (input half, then weight half) is timed as one: never cheaper
        assert len(c.student_bwd_split) == blocks and c.student_bwd_split[0] == c.student_bwd[0]
        assert all(s >= w for s, w in zip(c.student_bwd_split, c.student_bwd))
    fitted = fitted_costs(costs, 3)
    assert len(fitted.student_bwd_input) == len(fitted.student_bwd) == len(fitted.student_bwd_split)
    costs[0].student_bwd_input = []  # one profile without it: the fit leaves it out
    costs[0].student_bwd_split = []
    assert fitted_costs(costs, 3).student_bwd_input == [] == fitted_costs(costs, 3).student_bwd_split


def _two_stages(backward, **kw):
    """Four blocks on two stages, every cost but the backward's nothing."""
    zeros = [0.0] * 4
    split = Partition((2, 2), (2, 2), tied=False)
    return stage_cost_model(zeros, zeros, backward, zeros, zeros, zeros, zeros, split, Link(), **kw)


def test_the_split_backward_is_timed_with_the_runtimes_own_halves(monkeypatch):
    # core.runtime.stage splits with torch's stage_backward_input / stage_backward_weight, whose
    # graph walks cost as much as the math on a block of many small tensors: the profile times those
    import core.profile as profile

    calls = {"input": 0, "weight": 0}

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(profile, "stage_backward_input", counted("input", profile.stage_backward_input))
    monkeypatch.setattr(profile, "stage_backward_weight", counted("weight", profile.stage_backward_weight))
    task = ToyTask("frozen", True, 1)
    costs = profile_blocks(task, make_batches(1)[0], 1, sgd, torch.device("cpu"), repeats=3)
    split_blocks = len(costs.student_bwd) - 1  # every block but the first, whose input needs no gradient
    assert calls["weight"] >= split_blocks * 3
    assert calls["input"] >= calls["weight"] + split_blocks * 3  # the input half is timed alone too


def test_every_timed_input_half_has_an_input_to_differentiate(monkeypatch):
    # stage_backward_input detaches a block's outputs in place; a block that passes its input
    # through (DistilBERT's head returns its hidden states) thereby detaches its input, so a
    # profile reusing one input leaf would time an empty input half from the second repeat on
    import core.profile as profile

    inputs_seen = []
    real = profile.stage_backward_input

    def passing_through(outputs, grads, inputs, weights):
        inputs_seen.append(len(inputs))
        result = real(outputs, grads, inputs, weights)
        for t in inputs:  # as if each input were also an output
            t.detach_()
        return result

    monkeypatch.setattr(profile, "stage_backward_input", passing_through)
    profile_blocks(ToyTask("frozen", True, 1), make_batches(1)[0], 1, sgd, torch.device("cpu"), repeats=3)
    assert inputs_seen and min(inputs_seen) >= 1


def test_a_measured_split_backward_sets_each_stages_split_cost_and_share():
    model = _two_stages(
        [4.0, 4.0, 2.0, 6.0], student_bwd_input=[4.0, 1.0, 1.0, 3.0], student_bwd_split=[4.0, 6.0, 3.0, 7.0]
    )
    assert model.split_bwd == (10.0, 10.0)
    assert model.weight_share == (1 - 5 / 10, 1 - 4 / 10)


def test_the_weight_share_of_each_stage_comes_from_its_blocks():
    model = _two_stages([4.0, 4.0, 2.0, 6.0], student_bwd_input=[4.0, 1.0, 1.0, 3.0])
    assert model.weight_share == (1 - 5 / 8, 1 - 4 / 8)
    assert model.split_bwd is None  # not measured: a split costs the whole backward
    assert _two_stages([1.0] * 4).weight_share == 0.5


def test_the_optimizer_step_is_spread_by_each_blocks_own_cost_not_its_parameter_count():
    # block 0: eighty tiny tensors (0.1 % of the parameters); block 1: one large weight. The step's
    # per-tensor work makes block 0's share far larger than its parameter count gives
    many = torch.nn.Sequential(*[torch.nn.BatchNorm1d(4) for _ in range(40)])
    big = torch.nn.Linear(512, 512, bias=False)
    for p in [*many.parameters(), *big.parameters()]:
        p.grad = torch.zeros_like(p)
    params = [sum(p.numel() for p in b.parameters()) for b in (many, big)]
    assert params[0] / sum(params) < 0.002
    timed = step_costs_by_block([many, big], [], sgd, 5, lambda: None)
    assert len(timed) == 2 and all(t > 0 for t in timed)
    assert timed[0] / sum(timed) > 0.1
    # an EMA teacher block of the same index is updated with its student block
    twin = torch.nn.Linear(512, 512, bias=False)
    before = twin.weight.detach().clone()
    step_costs_by_block([big], [twin], sgd, 1, lambda: None)
    assert not torch.equal(twin.weight, before)
