"""A schedule defined in one new module (``tests/core/toy_schedule.py``) and registered there is
accepted everywhere with no other file changed: the validator, the simulator and its command
line, the runtime, the benchmark's run plan and the analysis tables."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from analysis.bench import bench_table, colour
from analysis.simulated import speedup_table
from core.config import PipelineConfig
from core.cost_model import unit_costs
from core.schedules import SCHEDULES, build_schedule, get_schedule, schedules
from core.simulate import main as simulate_main
from core.simulate import simulate
from core.validate import validate
from experiments.bench import BenchSettings, plan_runs
from tests.core.inprocess import run_in_process
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import ToyTask, make_batches, reference


@pytest.fixture
def toy():
    module = importlib.import_module("tests.core.toy_schedule")
    yield module.SPEC
    SCHEDULES.pop("toy", None)  # leave the registry as the other tests expect it
    sys.modules.pop("tests.core.toy_schedule", None)


def test_registering_adds_the_schedule(toy):
    assert get_schedule("toy") is toy and "toy" in [s.name for s in schedules("pipeline")]
    with pytest.raises(ValueError, match="registered already"):
        from core.schedules import register

        register(type(toy)("toy", "another", toy.build))


def test_the_validator_and_the_simulator_accept_it(toy):
    for stages, micro, teacher, views in ((1, 1, "ema", 2), (3, 4, "frozen", 1), (4, 2, "ema", 2)):
        validate(build_schedule("toy", stages, micro, teacher, 3, views=views))
    result = simulate(build_schedule("toy", 2, 2, "ema", 8), unit_costs(2), batch_samples=2)
    assert result.samples_per_s > 0 and 0 < result.efficiency <= 1


def test_the_simulator_command_line_accepts_it(toy, calibration_dir, capsys):
    args = ["--calibration", str(calibration_dir / "byol_resnet18_bf16.json"), "--stages", "2"]
    assert simulate_main([*args, "--microbatches", "2", "--schedule", "toy", "--format", "json"]) == 0
    assert '"schedule": "toy"' in capsys.readouterr().out


def test_the_simulator_command_line_loads_it_as_a_plugin(calibration_dir, capsys, monkeypatch):
    # named in TSPIPE_PLUGINS and imported by nothing else: the command line loads it first
    assert "toy" not in SCHEDULES and "tests.core.toy_schedule" not in sys.modules
    monkeypatch.setenv("TSPIPE_PLUGINS", "tests.core.toy_schedule")
    args = ["--calibration", str(calibration_dir / "byol_resnet18_bf16.json"), "--stages", "2"]
    try:
        assert simulate_main([*args, "--microbatches", "2", "--schedule", "toy", "--format", "json"]) == 0
    finally:
        SCHEDULES.pop("toy", None)
        sys.modules.pop("tests.core.toy_schedule", None)
    assert '"schedule": "toy"' in capsys.readouterr().out


def test_the_runtime_runs_it_and_equals_the_reference(toy):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got, _ = run_in_process(
            lambda: ToyTask("ema", True, 3), PipelineConfig("toy", 2, 2), make_batches(3), 3
        )
        want = reference(ToyTask("ema", True, 3), make_batches(3), 2)
    finally:
        torch.set_default_dtype(previous)
    assert relative_difference(got["student"], want["student"]) <= 1e-12


def test_the_benchmark_plans_it(toy):
    plan = plan_runs(BenchSettings("synthetic", "tiny"), views=2)
    assert {(r.procs, r.microbatches) for r in plan if r.schedule == "toy"} == {(2, 1), (2, 2), (2, 4)}
    only = plan_runs(BenchSettings("synthetic", "tiny", schedules=("toy",), microbatches=(3,)), views=2)
    assert [(r.schedule, r.procs, r.microbatches) for r in only] == [("toy", 2, 3)]


def row(schedule, micro, sps, **extra):
    return dict(
        schedule=schedule,
        stages=2,
        microbatches=micro,
        samples_per_s=sps,
        efficiency=0.5,
        bound_samples_per_s=2 * sps,
        bubble_fraction=None,
        peak_mem_gib=1.0,
        **extra,
    )


def test_the_analysis_tables_show_it_in_registry_order(toy):
    table = bench_table([row("toy", 2, 100.0), row("tspipe", 2, 150.0), row("gpipe", 2, 120.0)])
    lines = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert lines == ["gpipe", "tspipe", "toy"]  # order 2, 4, 50
    assert "| toy | 2 | 2 | 100 | — | 1.500 |" in table
    assert colour("toy") == "#17becf"
    sim = [
        row(
            s,
            2,
            v,
            calibration="c.json",
            link="nvlink",
            link_gbps=450.0,
            balance_cap=1.0,
            microbatch_penalty=None,
        )
        for s, v in (("tspipe", 300.0), ("toy", 150.0))
    ]
    assert "tspipe / toy" in speedup_table(sim) and "| 2.000 |" in speedup_table(sim)


def test_every_schedule_has_its_own_plot_colour():
    # the plots tell schedules apart by colour alone (a legend entry per schedule)
    colours = {spec.name: spec.colour.lower() for spec in schedules()}
    assert len(set(colours.values())) == len(colours), colours
