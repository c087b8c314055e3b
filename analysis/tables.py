"""Markdown tables from pandas DataFrames (every table of the reports goes through here)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def fmt(value: object, digits: int = 3) -> str:
    """Format a cell: floats to ``digits`` significant decimals, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 1, 1)}f}"
    return str(value)


def int_cell(x: object) -> int | None:
    """An integer cell of a frame column that holds gaps (read back as floats), or None."""
    return None if x is None or pd.isna(x) else int(x)


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``df`` (its columns as headers); numeric columns right-aligned."""
    columns = list(df.columns)
    values = [
        [None if (isinstance(v, float) and v != v) else v for v in row] for row in df.itertuples(index=False)
    ]
    numeric = [bool(values) and all(_is_number(row[i]) for row in values) for i in range(len(columns))]
    align = ["---:" if num else ":---" for num in numeric]
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in values]
    return "\n".join(lines) + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """A markdown table of ``rows`` under ``headers`` (through a DataFrame)."""
    return markdown(pd.DataFrame([list(r) for r in rows], columns=list(headers), dtype=object), digits)
