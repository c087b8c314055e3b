"""The accuracy section's paired difference: by seed, with a Student-t interval."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.compare import paired_difference, verdict
from analysis.report import paired_table


def _runs(pairs: dict[int, tuple[float, float | None]]) -> pd.DataFrame:
    rows = []
    for seed, (sync, stale) in pairs.items():
        rows.append({"seed": seed, "label": "sync", "metric_value": sync})
        if stale is not None:
            rows.append({"seed": seed, "label": "tspipe", "metric_value": stale})
    return pd.DataFrame(rows)


def test_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3)
    d = paired_difference(_runs({0: (10.0, 11.0), 1: (5.0, 7.0), 2: (0.0, 3.0)}), "sync", "tspipe")
    assert (d["seeds"], d["mean"], d["std"]) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert (d["high"] - d["low"]) / 2 == pytest.approx(4.302653 / 3**0.5, rel=1e-5)


def test_unpaired_seeds_are_left_out_and_too_few_said():
    d = paired_difference(_runs({0: (1.0, 2.0), 1: (1.0, None), 2: (1.0, 4.0)}), "sync", "tspipe")
    assert d["seeds"] == 2 and d["mean"] == pytest.approx(2.0)
    assert paired_difference(_runs({0: (1.0, 2.0)}), "sync", "tspipe") is None
    assert "fewer than two common seeds" in paired_table(_runs({0: (1.0, 2.0)}), "sync", "tspipe")


@pytest.mark.parametrize(
    "low, high, says",
    [
        (-0.02, -0.001, "loss: the interval lies below 0"),
        (0.001, 0.02, "gain: the interval lies above 0"),
        (-0.009, 0.02, "no loss: the interval lies above -1 point"),
        (-0.0248, 0.0384, "not shown: the interval reaches -2.48 points"),
    ],
)
def test_no_loss_is_said_only_where_the_interval_supports_it(low, high, says):
    assert verdict({"low": low, "high": high}) == says
    assert verdict(None) == "too few seeds"


def test_the_paired_table_says_what_its_interval_supports():
    runs = _runs({0: (0.70, 0.705), 1: (0.60, 0.604), 2: (0.65, 0.656)})
    table = paired_table(runs, "sync", "tspipe")
    assert "gain: the interval lies above 0" in table and "| tspipe - sync | 3 |" in table


def test_a_headline_says_when_training_did_not_beat_the_initial_weights():
    from analysis.report import untrained

    assert untrained(None) == "" and untrained({"low": 0.001, "mean": 0.05}) == ""
    assert untrained({"low": -0.05, "mean": -0.0263}) == (
        "; but training did not beat the initial weights (sync - init -2.63 points)"
    )
