"""The measured dp x pp table from rows: shapes named, the ratio to ddp on the same processes,
the oversubscription caveat, and the report's sources and freshness paths."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.hybrid import caveat, hybrid_section, hybrid_table
from analysis.hybrid import main as analyse
from analysis.provenance import code_paths
from core.metrics import make_row, write_rows


def _rows(cores: int) -> list[dict]:
    shapes = [("tspipe", 2, 2, 120.0), ("tspipe", 1, 4, 100.0), ("ddp", 1, 4, 80.0)]
    return [
        make_row(
            method="byol",
            method_title="BYOL",
            command="make bench-hybrid",
            schedule=schedule,
            model="resnet",
            dp=dp,
            stages=stages,
            processes=4,
            cores=cores,
            microbatches=1,
            global_batch=64,
            samples_per_s=sps,
            samples_per_s_min=sps - 5,
            samples_per_s_max=sps + 5,
            simulated=False,
        )
        for schedule, dp, stages, sps in shapes
    ]


def test_table_names_each_shape_and_its_ratio_to_ddp_on_the_same_processes():
    table = hybrid_table(pd.DataFrame(_rows(2)))
    assert list(table["run"]) == ["tspipe dp 2 x pp 2", "tspipe dp 1 x pp 4", "ddp x 4"]
    assert list(table["over ddp"]) == pytest.approx([1.5, 1.25, 1.0])
    assert table["rounds"][0] == "115-125"
    assert "not what it is worth" in caveat(pd.DataFrame(_rows(2)))
    assert "not what it is worth" not in caveat(pd.DataFrame(_rows(16)))


def test_section_file_and_report_paths(tmp_path):
    folder = tmp_path / "byol" / "hybrid"
    write_rows(folder / "rows.jsonl", _rows(2))
    assert analyse([str(folder)]) == 0
    text = (folder / "TABLE.md").read_text()
    assert text.startswith("# Data-parallel replicas") and "byol/hybrid/rows.jsonl#1" in text
    assert "| tspipe dp 2 x pp 2 |" in hybrid_section(pd.DataFrame(_rows(2)))
    assert analyse([str(tmp_path / "missing")]) == 2
    assert "experiments/bench_hybrid.py" in code_paths("byol/hybrid", pd.DataFrame(_rows(2)))
    assert "experiments/staleness.py" in code_paths("moco_v3/staleness", pd.DataFrame(_rows(2)))


def test_the_report_reads_the_hybrid_and_staleness_rows_as_sources(tmp_path):
    from analysis.report import load

    write_rows(tmp_path / "byol" / "hybrid" / "rows.jsonl", _rows(2))
    write_rows(tmp_path / "byol" / "staleness" / "rows.jsonl", _rows(2)[:1])
    data = load(tmp_path)
    assert set(data) == {"byol/hybrid", "byol/staleness"}
    assert list(data["byol/hybrid"]["_source"])[0] == "byol/hybrid/rows.jsonl#1"
