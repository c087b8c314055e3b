"""Comparisons from rows: each schedule at its best, the kinds the subject is compared with,
and ratios whose rounds overlap reported as no clear difference."""

from __future__ import annotations

import pytest

from analysis import rows as R
from analysis.compare import Ratio, best_of, best_per_schedule, comparison_groups, ratio


def row(schedule, micro, sps, low=None, high=None):
    return dict(
        schedule=schedule,
        microbatches=micro,
        samples_per_s=sps,
        samples_per_s_min=low,
        samples_per_s_max=high,
    )


def test_each_schedule_at_its_best():
    df = R.frame(
        [row("gpipe", 2, 100.0), row("gpipe", 4, 120.0), row("tspipe", 2, 150.0), row("tspipe", 4, 140.0)]
    )
    best = best_per_schedule(df)
    assert list(zip(best["schedule"], best["microbatches"])) == [("gpipe", 4), ("tspipe", 2)]
    assert best_of(df, ["gpipe", "1f1b"])["microbatches"] == 4
    assert best_of(df, ["ddp"]) is None


def test_the_kinds_come_from_the_registry():
    groups = comparison_groups()
    assert groups["gpipe/1f1b"] == ["gpipe", "1f1b"]
    assert {"mp", "ddp", "torch-gpipe/torch-1f1b", "zb", "tspipe-zb"} <= set(groups)
    assert not any("tspipe" in members or "sequential" in members for members in groups.values())


def test_overlapping_rounds_are_no_clear_difference():
    clear = ratio(row("tspipe", 2, 130.0, 125.0, 135.0), row("gpipe", 4, 100.0, 95.0, 110.0))
    assert clear.value == pytest.approx(1.3) and clear.clear
    assert clear.text().startswith("1.30 (1.14-1.42)")
    close = ratio(row("tspipe", 2, 103.0, 98.0, 108.0), row("gpipe", 4, 100.0, 95.0, 110.0))
    assert not close.clear and close.text().startswith("no clear difference")
    assert Ratio(2.5).clear and Ratio(2.5).text() == "2.5"  # simulated: no rounds
