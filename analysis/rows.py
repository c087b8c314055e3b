"""Result rows as pandas DataFrames: one loader for every table, the schema checked.

Every row file is JSON lines; each row gets ``_source`` (``file#line`` relative to the results
folder), which tables cite. Rows must carry every key of ``core.metrics.ROW_KEYS``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from core.metrics import ROW_KEYS

_NUMERIC = ("stages", "microbatches", "global_batch", "samples_per_s", "step_ms", "efficiency")


class SchemaError(ValueError):
    """A row lacks a key of the schema or has a value of the wrong kind."""


def read(path: Path, base: Path | None = None) -> pd.DataFrame:
    """The rows of one JSON-lines file, ``_source`` set relative to ``base`` (default: its
    folder).

    Raises:
        SchemaError: naming the first row (``file#line``) that breaks the schema.
    """
    path = Path(path)
    rel = path.relative_to(base).as_posix() if base is not None else path.name
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise SchemaError(f"{rel}#{number}: row lacks {', '.join(missing)} (see core.metrics.ROW_KEYS)")
        for key in _NUMERIC:
            value = row[key]
            if value is not None and not isinstance(value, (int, float)):
                raise SchemaError(f"{rel}#{number}: {key} must be a number, got {value!r}")
        row["_source"] = f"{rel}#{number}"
        records.append(row)
    return frame(records)


def frame(records: Iterable[dict]) -> pd.DataFrame:
    """A DataFrame of rows (object columns kept as they are: lists stay lists)."""
    df = pd.DataFrame.from_records(list(records))
    if df.empty:
        return pd.DataFrame(columns=[*ROW_KEYS, "_source"])
    return df.astype(object).where(df.notna(), None)


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Rows of several frames in order."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return frame([])
    return frame(pd.concat(frames, ignore_index=True).to_dict("records"))


def records(df: pd.DataFrame) -> list[dict]:
    """The rows back as dicts."""
    return df.to_dict("records")
