"""The benchmark driver end to end on a tiny workload, and the bench table from rows."""

import json

import pytest

from analysis.bench import bench_table, ratios, write_report
from core.metrics import read_rows
from experiments.benchmark import BenchSpec, run_benchmark, runs


def test_runs_cover_every_schedule():
    spec = BenchSpec("m", "x", "experiments.bench_engine", {}, batch=8, microbatches=(2, 4))
    plan = runs(spec)
    assert ("sequential", 1, 2) in plan and ("sequential", 1, 4) in plan
    assert ("mp", 2, 1) in plan and ("ddp", 2, 1) in plan
    assert ("tspipe", 2, 4) in plan and ("torch-1f1b", 2, 2) in plan


@pytest.mark.dist
@pytest.mark.slow
def test_tiny_benchmark_writes_rows_table_and_plots(tmp_path):
    spec = BenchSpec(
        method="engine",
        model="tiny",
        module="experiments.bench_engine",
        options={"batch": 8, "image": 4, "channels": 4, "blocks": 4},
        batch=8,
        microbatches=(2,),
        schedules=("sequential", "gpipe", "tspipe", "ddp", "torch-gpipe"),
        warmup=1,
        steps=3,
        rounds=1,
        backward_pieces=1,
        out=str(tmp_path),
    )
    rows = run_benchmark(spec)
    assert {r["schedule"] for r in rows} == {"sequential", "gpipe", "tspipe", "ddp", "torch-gpipe"}
    for row in rows:
        assert row["samples_per_s"] > 0 and row["simulated"] is False
        assert row["efficiency"] > 0 and row["bound_samples_per_s"] > 0
    ts = next(r for r in rows if r["schedule"] == "tspipe")
    assert ts["predicted_samples_per_s"] > 0 and ts["balance"] == [2, 2]
    assert read_rows(tmp_path / "rows.jsonl") == json.loads(json.dumps(rows))
    write_report(tmp_path, "tiny", "pytest")
    table = (tmp_path / "TABLE.md").read_text()
    assert "| tspipe | 2 | 2 |" in table
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    assert (tmp_path / "gantt_tspipe_N2_M2.png").exists()


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


def test_speedups_compare_with_tspipe_at_the_same_m():
    rows = [row("tspipe", 2, 300.0), row("tspipe", 4, 200.0), row("gpipe", 4, 100.0), row("mp", 1, 150.0)]
    speed = ratios(rows)
    assert speed[("gpipe", 4)] == pytest.approx(2.0)
    assert speed[("mp", 1)] == pytest.approx(2.0)  # no tspipe at M = 1: the first tspipe row
    table = bench_table(rows)
    assert table.splitlines()[2].startswith("| mp | 2 | 1 | 150 | 2.000 |")
