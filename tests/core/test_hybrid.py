"""dp x pp in the simulator: each replica's units shrink with dp, each stage's step pays a ring
all-reduce over dp, the memory model follows, and ``make simulate``'s hybrid rows and table."""

from __future__ import annotations

import dataclasses

import pytest

from core.calibration import load_calibration
from core.ddp_model import ring_allreduce_ms
from core.link import Link
from core.paper_scale import (
    best_configuration,
    calibration_costs,
    calibration_memory,
    calibration_partition,
    configurations,
    simulate_calibration,
    with_allreduce,
)

FREE = Link(1e9, 0.0)  # a link that costs nothing


@pytest.fixture
def cal(calibration_dir):
    return load_calibration(calibration_dir / "byol_resnet50_bf16.json")


def test_with_linear_costs_and_a_free_link_two_replicas_double_the_throughput(cal):
    # linear costs: a unit of half the samples costs half; no EMA time: nothing stays fixed
    linear = dataclasses.replace(cal.with_model("linear"), ema_ms=0.0)
    one, built, _ = simulate_calibration(linear, "tspipe", 4, 2, FREE)
    two, built2, _ = simulate_calibration(linear, "tspipe", 4, 2, FREE, dp=2)
    assert built2.microbatches == built.microbatches == 2
    assert two.step_ms == pytest.approx(one.step_ms / 2, rel=1e-9)
    assert two.samples_per_s == pytest.approx(2 * one.samples_per_s, rel=1e-9)


def test_each_stage_pays_a_ring_all_reduce_of_its_share_of_the_gradients(cal):
    link = Link(50.0, 10.0)
    partition = calibration_partition(cal, 4, None, cal.batch / 4)
    costs = calibration_costs(cal, partition, 4, link)
    more = with_allreduce(costs, cal, partition, 2, link)
    blocks = len(cal.student_fwd)
    for stage, n in enumerate(partition.student):
        extra = more.opt_ms[stage] - costs.opt_ms[stage]
        assert extra == pytest.approx(ring_allreduce_ms(4 * cal.student_params * n / blocks, 2, link))
        assert extra > 0
    assert ring_allreduce_ms(1e9, 1, link) == 0.0
    # and the all-reduce slows the step down against a free link
    slow, _, _ = simulate_calibration(cal, "gpipe", 4, 2, link, dp=2)
    fast, _, _ = simulate_calibration(
        cal, "gpipe", 4, 2, dataclasses.replace(link, gbps=1e9, latency_us=0.0), dp=2
    )
    assert slow.step_ms > fast.step_ms


def test_memory_per_gpu_holds_a_replica_s_activations_and_the_whole_batch_s_teacher_outputs(cal):
    _, built, part = simulate_calibration(cal, "gpipe", 4, 2, FREE)
    one = calibration_memory(cal, built, part)
    two = calibration_memory(cal, built, part, dp=2)
    # a smaller unit: less activation memory on every stage, the same parameters
    assert all(b.bytes < a.bytes for a, b in zip(one, two))


def test_a_replica_searches_the_divisors_of_its_own_batch(cal):
    assert max(m for m, _ in configurations(cal, "gpipe", 4, max_per_stage=1000, dp=4)) == cal.batch // 4
    with pytest.raises(ValueError, match="dp must be an integer >= 1 dividing the batch"):
        list(configurations(cal, "gpipe", 4, dp=3))
    result, built, _ = best_configuration(cal, "tspipe", 4, Link(450.0), dp=2)
    assert result.samples_per_s > 0 and cal.batch % (2 * built.microbatches) == 0


def test_make_simulate_rows_and_table_set_dp_x_pp_beside_ddp_and_one_pipeline(cal):
    from analysis.paper_scale import hybrid_table
    from experiments.simulate import HYBRID_GPUS, ddp_row, hybrid_rows

    rows = hybrid_rows(cal, "nvlink")
    assert rows and {r["kind"] for r in rows} == {"hybrid"}
    assert {r["gpus"] for r in rows} == set(HYBRID_GPUS)
    assert all(r["dp"] * r["stages"] == r["gpus"] and r["dp"] >= 2 and r["stages"] >= 2 for r in rows)
    assert all(r["mem_lower_bound_gib"] > 0 and r["simulated"] is True for r in rows)
    sims = [ddp_row(cal, "nvlink", gpus) for gpus in HYBRID_GPUS]
    sims += [r for r in rows if r["dp"] == 2]  # stand-ins for the single pipelines
    sims = [{**r, "kind": "sim", "stages": r["gpus"]} if r["kind"] == "hybrid" else r for r in sims]
    assert all(r["mem_lower_bound_gib"] > 0 and r["kind"] == "sim" for r in sims)
    text = hybrid_table([*sims, *rows])
    assert text.count("\n") >= 3 and "ddp" in text and f"{cal.pair}"[:4] in text
