"""The one loader of rows: schema checked, sources named."""

from __future__ import annotations

import json

import pytest

from analysis import rows as R
from core.metrics import make_row


def test_rows_load_with_their_source(tmp_path):
    path = tmp_path / "byol" / "rows.jsonl"
    path.parent.mkdir()
    rows = [
        make_row(method="byol", schedule=s, samples_per_s=1.0, simulated=False) for s in ("gpipe", "tspipe")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = R.read(path, tmp_path)
    assert list(df["_source"]) == ["byol/rows.jsonl#1", "byol/rows.jsonl#2"]
    assert list(df["schedule"]) == ["gpipe", "tspipe"] and df["metric"].iloc[0] is None


def test_a_row_off_the_schema_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = make_row(method="m", simulated=True)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"method": "m"}) + "\n")
    with pytest.raises(R.SchemaError, match=r"rows.jsonl#2: row lacks schedule"):
        R.read(path, tmp_path)
    path.write_text(json.dumps({**good, "samples_per_s": "fast"}) + "\n")
    with pytest.raises(R.SchemaError, match="samples_per_s must be a number"):
        R.read(path, tmp_path)
