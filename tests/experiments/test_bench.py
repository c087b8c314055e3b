"""The benchmark driver end to end on a tiny workload, its run plan from the registries, and the
bench table from rows."""

import json
import re
import statistics

import pandas as pd
import pytest

from analysis.bench import bench_table, ratios, write_report
from analysis.replay import replay_bench
from core.metrics import read_rows
from experiments.bench import BenchSettings, main, plan_runs, run_benchmark


def test_the_plan_covers_every_registered_schedule():
    plan = {
        (r.schedule, r.procs, r.microbatches) for r in plan_runs(BenchSettings("synthetic", "tiny"), views=2)
    }
    assert ("sequential", 1, 2) in plan and ("sequential", 1, 4) in plan
    assert ("mp", 2, 1) in plan and ("ddp", 2, 1) in plan
    assert ("tspipe", 2, 4) in plan and ("torch-1f1b", 2, 2) in plan
    # a shape a schedule refuses is left out: torch's 1F1B wants a unit per stage
    single = plan_runs(BenchSettings("synthetic", "tiny", stages=4, microbatches=(1,)), views=1)
    assert not any(r.schedule == "torch-1f1b" for r in single)


@pytest.mark.parametrize("shape", [{"stages": 0}, {"microbatches": (2, 0)}, {"microbatches": ()}])
def test_settings_without_a_stage_or_a_micro_batch_are_refused(shape):
    with pytest.raises(ValueError, match="need stages >= 1 and micro-batch counts >= 1"):
        BenchSettings("synthetic", "tiny", **shape)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--microbatches", "2", "9"], r"micro-batch count\(s\) \[9\] exceed the 8 samples"),
        (["--stages", "5", "--microbatches", "1"], "5 stages but only 4 blocks; use at most 4 stages"),
    ],
)
def test_a_shape_the_workload_cannot_run_is_an_error_not_a_traceback(tmp_path, capsys, args, message):
    argv = ["synthetic", "batch=8", "blocks=4", "--preset", "tiny", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    assert re.search("error: " + message, capsys.readouterr().err)
    assert not (tmp_path / "rows.jsonl").exists()


def _tiny(out, schedules, rounds):
    """The synthetic pair at its smallest, at M = 2, four timed steps a round."""
    return BenchSettings(
        method="synthetic",
        preset="tiny",
        overrides=("batch=8", "image=4", "channels=4", "blocks=4", "backward_pieces=1"),
        microbatches=(2,),
        schedules=schedules,
        warmup=1,
        steps=4,
        rounds=rounds,
        out=str(out),
        command="pytest",
    )


@pytest.mark.dist
@pytest.mark.slow
def test_tiny_benchmark_writes_rows_table_and_plots(tmp_path):
    settings = _tiny(tmp_path, ("sequential", "gpipe", "tspipe", "ddp", "torch-gpipe"), rounds=2)
    rows = run_benchmark(settings)
    assert {r["schedule"] for r in rows} == {"sequential", "gpipe", "tspipe", "ddp", "torch-gpipe"}
    for row in rows:
        assert row["samples_per_s"] > 0 and row["simulated"] is False
        assert row["efficiency"] > 0 and row["bound_samples_per_s"] > 0
        assert row["method"] == "synthetic" and row["command"] == "pytest"
    ts = next(r for r in rows if r["schedule"] == "tspipe")
    # the balance comes from the profiled block costs, so a loaded machine may tilt it
    assert ts["predicted_samples_per_s"] > 0
    assert ts["link_cpu_gbps"] > 0  # gloo between processes of one host: bytes cost CPU on both ends
    assert ts["link_wake_ms"] >= 0 and ts["link_wake_tau_ms"] > 0
    assert ts["link_beside_gbps"] is None or ts["link_beside_gbps"] > 0
    # each round predicted from its own calibration and compared with its own measurement
    per_round = ts["round_predicted_samples_per_s"]
    assert len(per_round) == 2 and ts["predicted_samples_per_s"] == pytest.approx(
        statistics.median(per_round)
    )
    ratios_ = [p / m for p, m in zip(per_round, ts["round_samples_per_s"])]
    assert ts["prediction_error"] == pytest.approx(statistics.median(ratios_) - 1)
    # and at the machine's speed at the run: probed around every run of the two-process group
    factors = ts["round_speed_factors"]
    assert len(factors) == 2 and all(f > 0 for f in factors)
    at_speed = [p * f / m for p, f, m in zip(per_round, factors, ts["round_samples_per_s"])]
    assert ts["prediction_error_at_speed"] == pytest.approx(statistics.median(at_speed) - 1)
    probed = json.loads((tmp_path / "runs" / "tspipe_N2_M2.r0.json").read_text())["speed_ms"]
    assert len(probed) == 2 and min(probed) > 0  # before and after the run
    assert next(r for r in rows if r["schedule"] == "sequential")["round_speed_factors"] is None
    fits = json.loads((tmp_path / "costs.json").read_text())["step_fits"]
    assert set(fits) == {"alone", "busy"} and fits["busy"]["2"]["scale"]["SB"] > 0
    assert sum(ts["balance"]) == 4 and len(ts["balance"]) == 2 and min(ts["balance"]) >= 1
    assert read_rows(tmp_path / "rows.jsonl") == json.loads(json.dumps(rows))
    write_report(tmp_path)
    table = (tmp_path / "TABLE.md").read_text()
    assert "| tspipe | 2 | 2 |" in table and "`pytest`" in table
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    assert (tmp_path / "gantt_tspipe_N2_M2.png").exists()
    # every kept round of the action-list runs replays: the runtime ran the very lists the
    # schedules build (analysis.replay refuses a timeline of anything else)
    replayed = replay_bench(tmp_path, pd.DataFrame(rows))
    assert sorted(replayed["schedule"]) == ["gpipe", "tspipe"] and set(replayed["rounds"]) == {2}
    assert "## Replayed on each run's own compute" in table and "| tspipe_N2_M2 |" in table
    assert (tmp_path / "replay.jsonl").exists()  # kept beside the rows: the runs are not committed


def row(schedule, micro, sps):
    return dict(
        schedule=schedule,
        stages=2,
        microbatches=micro,
        samples_per_s=sps,
        efficiency=0.5,
        bound_samples_per_s=2 * sps,
        bubble_fraction=None,
        peak_mem_gib=1.0,
    )


def test_speedups_are_tspipe_at_its_best_over_each_row():
    rows = [row("tspipe", 2, 300.0), row("tspipe", 4, 200.0), row("gpipe", 4, 100.0), row("mp", 1, 150.0)]
    speed = ratios(rows)
    assert speed[("gpipe", 4)] == pytest.approx(3.0) and speed[("tspipe", 4)] == pytest.approx(1.5)
    assert speed[("mp", 1)] == pytest.approx(2.0)
    table = bench_table(rows)
    assert table.splitlines()[2].startswith("| mp | 2 | 1 | 150 | — | 2.000 |")


@pytest.mark.dist
@pytest.mark.slow
def test_a_split_schedule_is_predicted_with_its_stages_waiting_factors_and_timed_split(tmp_path, monkeypatch):
    import experiments.bench as bench

    seen, splits = [], []

    def recording_predict(schedule, *args):
        seen.append((schedule, args[-1]))
        return predict(schedule, *args)

    def recording_split(costs, balance, teacher_balance, times):
        splits.append((list(balance), list(teacher_balance), [list(t) for t in times]))
        return split_by_stage(costs, balance, teacher_balance, times)

    predict, split_by_stage = bench.predict, bench.split_by_stage
    monkeypatch.setattr(bench, "predict", recording_predict)
    monkeypatch.setattr(bench, "split_by_stage", recording_split)
    settings = _tiny(tmp_path, ("sequential", "tspipe-zb"), rounds=1)
    rows = run_benchmark(settings)
    waiting = json.loads((tmp_path / "costs.json").read_text())["waiting"]
    # timed once, for the micro-batch count the split schedule runs at: one entry per stage,
    # stage 0 (no weight halves of its own) unchanged
    assert list(waiting) == ["2"] and len(waiting["2"]) == 2 and waiting["2"][0] == [1.0, 1.0]
    assert all(x > 0 for x in waiting["2"][1])
    # the pipeline's prediction got them, the one-process runs none
    given = dict(seen)
    assert [list(x) for x in given["tspipe-zb"]] == waiting["2"]
    assert given["sequential"] is None
    assert next(r for r in rows if r["schedule"] == "tspipe-zb")["predicted_samples_per_s"] > 0
    # each stage timed whole once, at the pipeline's micro-batch count, and only the pipeline's
    # costs split by it (once overall and once per round)
    times = json.loads((tmp_path / "costs.json").read_text())["stage_times"]
    assert list(times) == ["2"] and len(times["2"]) == 2 and all(x > 0 for t in times["2"] for x in t)
    zb = next(r for r in rows if r["schedule"] == "tspipe-zb")
    assert splits == [(zb["balance"], zb["teacher_balance"], times["2"])] * 2
