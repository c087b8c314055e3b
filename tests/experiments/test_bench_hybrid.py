"""The dp x pp benchmark: its runs (each schedule as dp x pp and as one pipeline on as many
processes, then ddp), its one-line errors, and a tiny group run end to end on 4 gloo processes."""

from __future__ import annotations

import pytest

from experiments.bench_hybrid import HybridRun, hybrid_runs, main


def test_runs_are_each_schedule_as_dp_x_pp_and_as_one_pipeline_then_ddp():
    runs = hybrid_runs(2, 2, ["tspipe", "gpipe"], [1, 2], batch=64, views=2)
    assert [r.name for r in runs] == [
        "tspipe_D2_N2_M1",
        "tspipe_D2_N2_M2",
        "tspipe_D1_N4_M1",
        "tspipe_D1_N4_M2",
        "gpipe_D2_N2_M1",
        "gpipe_D2_N2_M2",
        "gpipe_D1_N4_M1",
        "gpipe_D1_N4_M2",
        "ddp_D1_N4_M1",
    ]
    assert {r.procs for r in runs} == {4}
    # a mini-batch that does not split into dp x M equal micro-batches is skipped, not run
    odd = hybrid_runs(2, 2, ["gpipe"], [4], batch=12, views=2)
    assert HybridRun("gpipe", 2, 2, 4) not in odd and HybridRun("gpipe", 1, 4, 4) in odd
    for dp, stages, names in (
        (1, 2, ["tspipe"]),
        (2, 1, ["tspipe"]),
        (2, 2, ["ddp"]),
        (2, 2, ["sequential"]),
    ):
        with pytest.raises(ValueError):
            hybrid_runs(dp, stages, names, [1], batch=64, views=2)


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["byol", "--preset", "tiny", "--schedules", "ddp"]) == 2
    assert "not a pipeline schedule" in capsys.readouterr().err
    assert main(["byol", "--preset", "tiny", "--dp", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: a hybrid needs dp >= 2")


@pytest.mark.dist
@pytest.mark.slow
def test_a_tiny_group_measures_dp_x_pp_beside_one_pipeline_and_ddp(tmp_path):
    from core.metrics import read_rows

    args = ["byol", "--preset", "tiny", "--schedules", "tspipe", "--microbatches", "1"]
    args += ["--warmup", "1", "--steps", "4", "--rounds", "1", "--out", str(tmp_path), "--command", "pytest"]
    assert main(args) == 0
    rows = read_rows(tmp_path / "rows.jsonl")
    shapes = {(r["schedule"], r["dp"], r["stages"]) for r in rows}
    assert shapes == {("tspipe", 2, 2), ("tspipe", 1, 4), ("ddp", 1, 4)}
    for row in rows:
        assert row["samples_per_s"] > 0 and row["simulated"] is False and row["processes"] == 4
        assert row["cores"] >= 1 and row["command"] == "pytest" and row["steady_steps"] == 2
    hybrid = next(r for r in rows if r["dp"] == 2)
    assert len(hybrid["balance"]) == 2 and len(next(r for r in rows if r["stages"] == 4)["balance"]) == 4
