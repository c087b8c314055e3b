"""Split backwards whose weight halves wait: which halves run while another waits, what the
stage-by-stage timing reports, and what the simulator charges for them."""

from dataclasses import replace

import pytest
import torch

import core.deferral as deferral
from core.cost_model import unit_costs
from core.deferral import deferral_factors
from core.schedules import build_schedule
from core.simulate import simulate, waiting_halves
from tests.core.toy import ToyTask, make_batches

CPU = torch.device("cpu")


def _by_stage(actions):
    return {s: sorted(str(a) for a in actions if a.stage == s) for s in {a.stage for a in actions}}


def test_tspipe_zb_holds_every_weight_half_of_its_last_stage_until_the_input_halves_are_done():
    # at N = 2, M = 2, 2 views: stage 1 runs SB0 SB1 SB2 SB3, then SW0 ... SW3
    schedule = build_schedule("tspipe-zb", 2, 2, "ema", 3, 1, 2)
    waits = _by_stage(waiting_halves(schedule))
    assert set(waits) == {1}  # stage 0 runs each weight half right after its input half
    for batch in ("", "@1", "@2"):
        assert {f"1SB{u}{batch}" for u in (1, 2, 3)} | {f"1SW{u}{batch}" for u in (0, 1, 2)} <= set(waits[1])
        # the first input half and the last weight half run with no other weight half held
        assert f"1SB0{batch}" not in waits[1] and f"1SW3{batch}" not in waits[1]
    assert len(waits[1]) == 3 * 6


@pytest.mark.parametrize("name", ["zb", "1f1b", "tspipe"])
def test_schedules_that_run_each_weight_half_at_once_or_never_split_have_none_waiting(name):
    assert waiting_halves(build_schedule(name, 2, 4, "ema", 3, 1, 2)) == set()


def test_the_simulator_charges_the_factors_to_waiting_halves_only():
    split = build_schedule("tspipe-zb", 2, 4, "ema", 8, 1, 2)
    plain = unit_costs(2)
    same = simulate(split, replace(plain, waiting=((1.0, 1.0), (1.0, 1.0))), 8)
    slower = simulate(split, replace(plain, waiting=((1.0, 1.0), (2.0, 1.5))), 8)
    base = simulate(split, plain, 8)
    assert same.step_ms == pytest.approx(base.step_ms)
    assert slower.step_ms > base.step_ms
    durations = {r.action: r.end_ms - r.start_ms for r in slower.records if r.stage == 1}
    # unit costs: a backward of 2 split in halves of 1; an input half with weight halves held
    # costs twice, a weight half with others still held 1.5 times
    assert durations["1SB0@3"] == pytest.approx(1.0) and durations["1SB1@3"] == pytest.approx(2.0)
    assert durations["1SW0@3"] == pytest.approx(1.5) and durations["1SW7@3"] == pytest.approx(1.0)
    # a schedule with no waiting halves is untouched by the factors
    zb = build_schedule("zb", 2, 4, "ema", 8, 1, 2)
    heavy = replace(plain, waiting=((3.0, 3.0), (3.0, 3.0)))
    assert simulate(zb, heavy, 8).step_ms == pytest.approx(simulate(zb, plain, 8).step_ms)


def test_a_factor_list_needs_one_entry_per_stage():
    plain = unit_costs(2)
    with pytest.raises(ValueError, match="waiting has 1 stages"):
        replace(plain, waiting=((1.0, 1.0),))


class _Clock:
    """A fake clock the fake halves advance: an input half costs 1 alone and 2 with another
    unit's weight half held; a weight half 1 alone and 3 with another still held."""

    def __init__(self):
        self.now, self.held = 0.0, set()

    def input_half(self, outputs, grads, inputs, weights):
        group = object()
        self.now += 2.0 if self.held else 1.0
        self.held.add(group)
        return None, group

    def weight_half(self, weights, group):
        self.held.discard(group)
        self.now += 3.0 if self.held else 1.0


def test_the_factors_compare_the_halves_that_wait_with_the_same_halves_run_at_once(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(deferral, "stage_backward_input", clock.input_half)
    monkeypatch.setattr(deferral, "stage_backward_weight", clock.weight_half)
    monkeypatch.setattr(deferral.time, "perf_counter", lambda: clock.now / 1e3)
    task = ToyTask("ema", True, 1)
    factors = deferral_factors(task, make_batches(1)[0], 2, [2, 2, 1], CPU, repeats=2)
    # stage 0 sends no input gradient; the others: input halves 2 against 1, weight halves 3
    # against 1 (the first input half and the last weight half, alone in both orders, left out)
    assert [pytest.approx(f) for f in factors] == [(1.0, 1.0), (2.0, 3.0), (2.0, 3.0)]


def test_the_factors_of_real_halves_on_a_toy_pair():
    task = ToyTask("frozen", True, 1)
    batch = make_batches(1)[0]
    factors = deferral_factors(task, batch, 3, [2, 2], CPU, repeats=1)
    assert len(factors) == 2 and factors[0] == (1.0, 1.0)
    assert all(x > 0 for x in factors[1])
    # one unit per mini-batch: nothing can wait
    assert deferral_factors(task, batch, 1, [2, 2], CPU) == [(1.0, 1.0), (1.0, 1.0)]
