"""The staleness sweep: its runs (paired seeds, L = 0 required) and its table and plot from rows
(paired differences to L = 0 with a Student-t interval, checked by hand)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.staleness import main as analyse
from analysis.staleness import staleness_section, staleness_table
from core.metrics import make_row, write_rows
from experiments.staleness import main, staleness_runs


def test_runs_pair_every_lookahead_with_every_seed():
    runs = staleness_runs([0, 1, 2, 4], [0, 1, 2])
    assert [(r.label, r.seed) for r in runs[:4]] == [("L0", 0), ("L1", 0), ("L2", 0), ("L4", 0)]
    assert len(runs) == 12 and {r.schedule for r in runs} == {"tspipe"}
    assert runs[3].overrides == ("pipeline.teacher_lookahead=4",)
    for bad in ([1, 2], [0, 0, 1], [0, -1]):
        with pytest.raises(ValueError):
            staleness_runs(bad, [0, 1])
    with pytest.raises(ValueError):
        staleness_runs([0, 1], [])


def test_set_adds_overrides_to_every_run_and_refuses_what_is_not_one():
    runs = staleness_runs([0, 2], [0, 1], ["method.train_subset=200", "lr=0.1"])
    assert {r.overrides for r in runs if r.label == "L2"} == {
        ("pipeline.teacher_lookahead=2", "method.train_subset=200", "lr=0.1")
    }
    for bad in (["train_subset"], ["=3"], ["--student-delay=1"], ["teacher_lookahead=2"]):
        with pytest.raises(ValueError):
            staleness_runs([0, 1], [0], bad)


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["byol", "--set", "no_such_key=1"]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert main(["byol", "--set", "pipeline.teacher_lookahead=1"]) == 2
    assert "--lookaheads chooses it" in capsys.readouterr().err
    assert main(["byol", "--lookaheads", "1", "2"]) == 2
    assert "must include 0" in capsys.readouterr().err
    assert main(["byol", "--preset", "no-such-preset"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def _rows(values: dict[int, list[float]], extra: tuple[str, ...] = ()) -> list[dict]:
    return [
        make_row(
            method="moco_v3",
            schedule="tspipe",
            label=f"L{lookahead}",
            seed=seed,
            metric="knn_top1",
            metric_value=v,
            simulated=False,
            overrides=[f"pipeline.teacher_lookahead={lookahead}", *extra],
        )
        for lookahead, per_seed in values.items()
        for seed, v in enumerate(per_seed)
    ]


def test_table_and_plot_from_rows(tmp_path):
    # L1 - L0 by seed: +0.01, +0.02, +0.03 -> mean 2 points, sd 1 point, t(0.975, 2) = 4.3027
    rows = _rows({0: [0.50, 0.60, 0.70], 1: [0.51, 0.62, 0.73], 4: [0.40, 0.50, 0.60]})
    write_rows(tmp_path / "rows.jsonl", rows)

    table = staleness_table(pd.DataFrame(rows))
    assert list(table["L"]) == [0, 1, 4] and list(table["seeds"]) == [3, 3, 3]
    assert table["mean %"][0] == pytest.approx(60.0)
    l1 = table.iloc[1]
    assert l1["L - L0 (points)"] == pytest.approx(2.0)
    half = 4.302653 / 3**0.5
    assert l1["95 % interval"] == f"[{2 - half:+.2f}, {2 + half:+.2f}]" and not l1["interval excludes 0"]
    l4 = table.iloc[2]  # -10 points on every seed: sd 0, the interval is the point itself
    assert l4["L - L0 (points)"] == pytest.approx(-10.0) and l4["interval excludes 0"]
    assert pd.isna(table.iloc[0]["L - L0 (points)"])
    assert analyse([str(tmp_path), "--title", "t", "--command", "make staleness-mocov3"]) == 0
    text = (tmp_path / "TABLE.md").read_text()
    assert (
        "make staleness-mocov3" in text
        and "| 4 |" in text
        and (tmp_path / "staleness.png").stat().st_size > 0
    )
    assert analyse([str(tmp_path / "missing")]) == 2
    section = staleness_section(tmp_path, "moco_v3/staleness")  # the report's part
    assert "| 4 |" in section and "](moco_v3/staleness/staleness.png)" in section
    assert staleness_section(tmp_path / "missing", "x") is None


def test_the_gain_over_each_seeds_initial_weights_is_a_column():
    rows = _rows({0: [0.50, 0.60, 0.70], 1: [0.51, 0.62, 0.73]})
    rows += [
        make_row(
            method="moco_v3",
            schedule="none",
            label="init",
            seed=s,
            metric="knn_top1",
            metric_value=v,
            simulated=False,
        )
        for s, v in enumerate([0.40, 0.40, 0.50])
    ]
    table = staleness_table(pd.DataFrame(rows))
    # L0: (0.10 + 0.20 + 0.20) / 3; L1: (0.11 + 0.22 + 0.23) / 3
    assert list(table["gain over init (points)"]) == pytest.approx([50 / 3, 56 / 3])
    assert "gain over init (points)" not in staleness_table(pd.DataFrame(_rows({0: [0.5, 0.6]})))


def test_initial_rows_evaluate_the_weights_every_run_of_a_seed_starts_from():
    from experiments.accuracy import initial_rows

    first, second = initial_rows("byol", "tiny", [0, 1])
    again = initial_rows("byol", "tiny", [0])[0]
    assert (first["label"], first["steps"], first["schedule"], first["metric"]) == (
        "init",
        0,
        "none",
        "knn_top1",
    )
    assert 0.0 < first["metric_value"] <= 1.0 and first["fingerprint"] and first["simulated"] is False
    assert again["metric_value"] == first["metric_value"]  # the seed fixes the weights
    assert second["seed"] == 1 and 0.0 < second["metric_value"] <= 1.0
    # the runs' overrides build the weights too, and the row lists them
    (tuned,) = initial_rows("byol", "tiny", [0], overrides=["method.lr=0.5"])
    assert tuned["overrides"] == ["method.lr=0.5"] and tuned["metric_value"] == first["metric_value"]


def test_the_tables_name_the_overrides_every_run_shares(tmp_path):
    from analysis.staleness import common_overrides

    rows = _rows({0: [0.5, 0.6], 1: [0.5, 0.7]}, ("method.train_subset=20000",))
    assert common_overrides(pd.DataFrame(rows)) == ["method.train_subset=20000"]
    assert common_overrides(pd.DataFrame(_rows({0: [0.5], 1: [0.6]}))) == []
    write_rows(tmp_path / "rows.jsonl", rows)
    assert analyse([str(tmp_path)]) == 0
    assert "Every run with `method.train_subset=20000`" in (tmp_path / "TABLE.md").read_text()
    assert "`method.train_subset=20000`" in staleness_section(tmp_path, "x")


def test_symmetric_adds_one_run_per_seed_and_its_paired_table(tmp_path):
    runs = staleness_runs([0, 1], [0, 1], ["method.train_subset=200"], symmetric=True)
    assert [(r.label, r.seed) for r in runs] == [
        ("L0", 0),
        ("L1", 0),
        ("symmetric", 0),
        ("L0", 1),
        ("L1", 1),
        ("symmetric", 1),
    ]
    assert runs[2].overrides == (
        "pipeline.teacher_lookahead=1",
        "--student-delay=1",
        "method.train_subset=200",
    )
    assert all(r.label != "symmetric" for r in staleness_runs([0, 1], [0, 1]))

    from analysis.staleness import symmetric_table

    rows = _rows({0: [0.50, 0.60, 0.70], 1: [0.51, 0.62, 0.73]})
    assert symmetric_table(pd.DataFrame(rows)) is None
    # symmetric - L0 by seed: -0.05, -0.05, -0.05; symmetric - L1: -0.06, -0.07, -0.08
    rows += [{**r, "label": "symmetric"} for r in _rows({1: [0.45, 0.55, 0.65]})]
    table = symmetric_table(pd.DataFrame(rows))
    assert list(table["comparison"]) == ["symmetric - L0", "symmetric - L1"]
    assert table["difference (points)"].tolist() == pytest.approx([-5.0, -7.0])
    assert table["symmetric mean %"][0] == pytest.approx(55.0) and list(table["seeds"]) == [3, 3]
    half = 4.302653 * 1.0 / 3**0.5
    assert table["95 % interval"][1] == f"[{-7 - half:+.2f}, {-7 + half:+.2f}]"
    assert table["interval excludes 0"].tolist() == [True, True]
    # the curve itself ignores the ablation
    assert list(staleness_table(pd.DataFrame(rows))["L"]) == [0, 1]
    write_rows(tmp_path / "rows.jsonl", rows)
    assert analyse([str(tmp_path)]) == 0
    assert "| symmetric - L1 |" in (tmp_path / "TABLE.md").read_text()
    assert "| symmetric - L0 |" in staleness_section(tmp_path, "x")


def test_the_headline_takes_L1_and_the_symmetric_run_against_L0(tmp_path):
    from analysis.report import headline_snippet
    from analysis.staleness import headline_pairs

    assert headline_pairs(tmp_path / "missing") == []
    rows = _rows({0: [0.70, 0.72, 0.74], 1: [0.705, 0.726, 0.744], 2: [0.6, 0.6, 0.6]})
    rows += [{**r, "label": "symmetric"} for r in _rows({1: [0.65, 0.66, 0.70]})]
    rows += [{**r, "label": "init", "schedule": "none"} for r in _rows({0: [0.50, 0.52, 0.54]})]
    write_rows(tmp_path / "rows.jsonl", rows)
    l1, sym = headline_pairs(tmp_path)
    # L1 - L0 by seed: +0.005, +0.006, +0.004; L0 - init: +0.20 on every seed
    assert (l1["label"], l1["seeds"]) == ("L1", 3) and l1["paired"]["mean"] == pytest.approx(0.005)
    assert l1["gain"]["mean"] == pytest.approx(0.20) and l1["sync"] == pytest.approx(0.72)
    assert sym["label"] == "symmetric" and sym["paired"]["mean"] == pytest.approx(-0.05)
    text = headline_snippet(
        [], [], [{**h, "title": "MoCo-v3", "base": "L0", "sweep": True, "identical": 0} for h in (l1, sym)]
    )
    assert "(L = 1) - synchronous (L = 0), staleness sweep (3 seeds)" in text
    assert "+0.50 points" in text and "gain: the interval lies above 0" in text
    assert "symmetric (L = 1, the student one step late too) - synchronous (L = 0)" in text
    assert "-5.00 points" in text and "training did not beat" not in text


def test_extend_keeps_every_run_already_in_the_sweep(tmp_path):
    from experiments.staleness import extended

    path = tmp_path / "rows.jsonl"
    first = staleness_runs([0, 1, 2, 4], [0, 1, 2], symmetric=True)
    rows = [{"label": r.label, "seed": r.seed} for r in first] + [{"label": "init", "seed": 0}]
    write_rows(path, rows + [{"label": "other", "seed": 7}])
    grown = staleness_runs([0, 1], [3, 4], symmetric=True)
    runs = extended(grown, path)
    assert runs[: len(grown)] == grown  # what was asked for comes first
    assert {(r.label, r.seed) for r in runs} == {(r.label, r.seed) for r in first + grown}
    assert len(runs) == len(first) + len(grown)  # nothing twice, no init or unknown label
    old = {(r.label, r.seed): r for r in first}
    assert all(r == old[(r.label, r.seed)] for r in runs[len(grown) :])  # rebuilt as first made
    assert extended(grown, tmp_path / "missing.jsonl") == grown
