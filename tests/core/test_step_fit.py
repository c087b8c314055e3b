"""The step fit: per-kind costs read from a one-process step's timeline, put back on a profile,
reproduce that step; and the simulator's input, split-backward and message costs it relies on."""

import dataclasses

import pytest

from core.action import Op
from core.bench import cost_model
from core.cost_model import CostModel
from core.link import Link
from core.profile import BlockCosts
from core.schedules import build_schedule
from core.simulate import simulate
from core.step_fit import apply_fit, fit_step, processes

# the "machine": what each kind really costs per unit (one stage), and per mini-batch
TRUE = dict(tf=3.0, sf=5.0, sb=3.0, loss=0.5, opt=2.0, input=5.0)


def measured(views: int = 2, batches: int = 8) -> list:
    """A one-process sequential run's timeline under TRUE costs (the simulator as the machine)."""
    model = CostModel(
        teacher_fwd=(TRUE["tf"],),
        student_fwd=(TRUE["sf"],),
        student_bwd=(TRUE["sb"],),
        teacher_bytes=(0.0,),
        student_bytes=(0.0,),
        opt_ms=(TRUE["opt"],),
        loss_ms=TRUE["loss"],
        input_ms=TRUE["input"],
    )
    return simulate(build_schedule("sequential", 1, 1, "ema", batches, views=views), model, 8).records


def profile() -> BlockCosts:
    """Blocks timed one by one: teacher 2 (x1.5 in the step), student forward 4 (x1.25),
    backward 6 (x0.5), no loss, an update of 1 split 1:3 by parameters."""
    return BlockCosts(
        samples=4,
        teacher_fwd=[1.0, 1.0],
        student_fwd=[2.0, 2.0],
        student_bwd=[3.0, 3.0],
        teacher_bytes=[0.0, 0.0],
        student_bytes=[0.0, 0.0],
        loss_ms=0.0,
        opt_ms=[0.25, 0.75],
        param_bytes=[4.0, 12.0],
        student_bwd_input=[3.0, 1.0],
        student_bwd_split=[3.0, 4.0],
    )


def test_the_fit_recovers_each_kind_the_loss_the_update_and_the_input():
    fit = fit_step([measured()], profile(), 2, 6)
    assert fit.scale == pytest.approx({"TF": 1.5, "SF": 1.25, "SB": 0.5})
    assert (fit.loss_ms, fit.opt_ms, fit.input_ms) == pytest.approx((0.5, 2.0, 5.0))
    assert fit.step_ms == pytest.approx(2 * (3 + 5 + 3) + 0.5 + 2 + 5)


def test_the_fitted_costs_reproduce_the_measured_step():
    fit = fit_step([measured()], profile(), 2, 6)
    costs = apply_fit(profile(), fit)
    assert costs.opt_ms == pytest.approx([0.5, 1.5])  # spread as the profile spread it
    assert costs.student_bwd_split == pytest.approx([1.5, 2.0])  # backward kinds scale together
    model = cost_model(costs, [2], [2], Link())
    step = simulate(build_schedule("sequential", 1, 1, "ema", 8, views=2), model, 8).step_ms
    assert step == pytest.approx(fit.step_ms)


def test_with_one_unit_per_batch_the_input_must_be_given():
    records = measured(views=1)
    with pytest.raises(ValueError, match="input cost cannot be told apart"):
        fit_step([records], profile(), 2, 6)
    fit = fit_step([records], profile(), 2, 6, input_ms=5.0)
    assert fit.scale["TF"] == pytest.approx(1.5) and fit.input_ms == 5.0


def test_a_busy_runs_processes_are_told_apart_and_fitted_together():
    one = measured()
    other = [dataclasses.replace(r, start_ms=r.start_ms + 0.1, end_ms=r.end_ms + 0.1) for r in one]
    split = processes(one + other)
    assert [len(x) for x in split] == [len(one), len(one)]
    assert fit_step(split, profile(), 2, 6).scale == pytest.approx({"TF": 1.5, "SF": 1.25, "SB": 0.5})


@pytest.mark.parametrize("op", ["TF", "SF", "SB", "OPT"])
def test_a_timeline_without_a_kind_the_fit_needs_is_refused(op):
    records = [r for r in measured() if r.op != op]
    with pytest.raises(ValueError, match=rf"\['{op}'\]"):
        fit_step([records], profile(), 2, 6)


# ---- what the simulator charges ---------------------------------------------------------------


def two_stages(**kw) -> CostModel:
    base = dict(
        teacher_fwd=(1.0, 1.0),
        student_fwd=(1.0, 1.0),
        student_bwd=(2.0, 2.0),
        teacher_bytes=(100.0, 100.0),
        student_bytes=(200.0, 200.0),
        opt_ms=(0.0, 0.0),
    )
    return CostModel(**{**base, **kw})


def test_the_input_is_charged_once_per_mini_batch_to_stage_0s_first_action():
    built = build_schedule("gpipe", 2, 2, "ema", 6)
    plain = simulate(built, two_stages(), 2)
    fed = simulate(built, two_stages(input_ms=3.0), 2)

    def first(records, b):
        return min((r for r in records if r.stage == 0 and r.batch == b), key=lambda r: r.start_ms)

    for b in range(6):
        a, c = first(plain.records, b), first(fed.records, b)
        assert (c.end_ms - c.start_ms) - (a.end_ms - a.start_ms) == pytest.approx(3.0)
        rest = [
            r for r in fed.records if r.stage == 0 and r.batch == b and r != c and r.op in ("TF", "SF", "SB")
        ]
        assert rest and all(r.end_ms - r.start_ms in (1.0, 2.0) for r in rest)
    assert fed.step_ms > plain.step_ms


def test_a_split_backward_costs_what_was_measured_for_it():
    built = build_schedule("zb", 2, 2, "ema", 6)
    result = simulate(built, two_stages(split_bwd=(2.0, 3.0), weight_share=(0.0, 0.4)), 2)
    last = {
        (r.op, r.microbatch): r.end_ms - r.start_ms for r in result.records if r.stage == 1 and r.batch == 3
    }
    assert last[("SB", 0)] == pytest.approx(3.0 * 0.6) and last[("SW", 0)] == pytest.approx(3.0 * 0.4)
    first = [r for r in result.records if r.stage == 0 and r.batch == 3 and r.op == "SB"]
    assert all(r.end_ms - r.start_ms == pytest.approx(2.0) for r in first)  # stage 0 does not split


def test_a_cpu_links_bytes_occupy_both_ends():
    link = Link(gbps=1.0, latency_us=0.0, overhead_us=10.0, cpu_gbps=0.5)
    model = two_stages(link=link)
    built = build_schedule("gpipe", 2, 1, "ema", 4)
    took = {a.op.value: model.duration(a, 1, 1) for rank in built.lowered for a in rank if not a.is_compute}
    per_byte = 1e3 / 0.5e9  # ms per byte on each end
    assert took[Op.SEND_TF.value] == pytest.approx(0.01 + 100 * per_byte)
    assert took[Op.RECV_TF.value] == pytest.approx(0.01 + 100 * per_byte)
    assert took[Op.SEND_SF.value] == pytest.approx(0.01 + 200 * per_byte)
    assert took[Op.RECV_SB.value] == pytest.approx(0.01 + 200 * per_byte)
    assert took[Op.SEND_SB.value] == pytest.approx(0.01 + 200 * per_byte)
    assert Link(overhead_us=10.0).handling_ms(1e9) == pytest.approx(0.01)  # copy engines: bytes are free
    with pytest.raises(ValueError, match="cpu_gbps"):
        Link(cpu_gbps=0.0)


def test_what_a_messages_bytes_cost_the_work_beside_them_adds_to_each_ends_handling():
    link = Link(overhead_us=10.0, cpu_gbps=0.5, beside_gbps=0.25)
    # 1 GB: 2 s of copying and 4 s lost beside it, at each end
    assert link.handling_ms(1e9) == pytest.approx(0.01 + 2e3 + 4e3)
    assert Link(overhead_us=10.0, beside_gbps=0.25).handling_ms(1e9) == pytest.approx(0.01 + 4e3)
    with pytest.raises(ValueError, match="beside_gbps"):
        Link(beside_gbps=0.0)
