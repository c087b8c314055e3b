"""Accuracy matrices: rows whose numerics fingerprint is current are kept, not re-run; the
table says what training gained over the initial weights and each label against sync."""

from __future__ import annotations

import json
import subprocess

from analysis.accuracy import paired_lines
from core.metrics import make_row, read_rows, write_rows
from experiments.accuracy import (
    ROOT,
    AccuracyRun,
    current_rows,
    finished_runs,
    provenance,
    run_args,
    run_matrix,
)

HEAD = subprocess.run(
    ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
).stdout.strip()  # committed code with today's numerics fingerprint


ROOT_COMMIT = subprocess.run(
    ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True, text=True
).stdout.split()[0][:12]  # the first commit: no numerics fingerprint yet


def _row(run: AccuracyRun, value: float, **extra) -> dict:
    from training.cli import parse_args
    from training.folder import config_digest

    row = make_row(
        method="byol",
        schedule=run.schedule,
        metric="knn_top1",
        metric_value=value,
        seed=run.seed,
        simulated=False,
    )
    digest = config_digest(*parse_args(run_args("byol", "accuracy", run))[1:])
    labelled = {**row, "label": run.label, "overrides": list(run.overrides), "config_digest": digest}
    return {**provenance("byol", labelled), "git_sha": HEAD, **extra}


def test_current_rows_are_kept_and_stale_or_different_ones_are_not(tmp_path):
    path = tmp_path / "rows.jsonl"
    sync0 = AccuracyRun("sync", "sequential", ("checkpoint_every=78",), 0)
    tspipe0 = AccuracyRun("tspipe", "tspipe", (), 0)
    sync1 = AccuracyRun("sync", "sequential", (), 1)
    symmetric0 = AccuracyRun("symmetric", "tspipe", ("--student-delay=1",), 0)
    old = {**_row(AccuracyRun("sync", "sequential", (), 2), 0.7)}
    old.pop("config_digest")
    write_rows(
        path,
        [
            _row(sync0, 0.7),
            _row(tspipe0, 0.7),
            _row(sync1, 0.7, fingerprint="0000000000000000"),  # numerics changed since
            _row(AccuracyRun("symmetric", "tspipe", (), 0), 0.7),  # made without the delay
            old,  # made before rows carried a config digest
            _row(AccuracyRun("sync", "sequential", (), 3), 0.7, git_sha=HEAD + "+dirty"),  # uncommitted code
            _row(AccuracyRun("sync", "sequential", (), 4), 0.7, git_sha=ROOT_COMMIT),  # stamped later
        ],
    )
    runs = [
        sync0,
        AccuracyRun("tspipe", "tspipe", ("lr=0.5",), 0),  # another config: re-run
        sync1,
        symmetric0,
        AccuracyRun("sync", "sequential", (), 2),
        AccuracyRun("sync", "sequential", (), 3),
        AccuracyRun("sync", "sequential", (), 4),
    ]
    kept = current_rows("byol", "accuracy", path, runs)
    assert list(kept) == ["sync-s0"] and kept["sync-s0"]["metric_value"] == 0.7
    assert list(current_rows("byol", "accuracy", path, [tspipe0])) == ["tspipe-s0"]
    assert current_rows("byol", "accuracy", tmp_path / "missing.jsonl", runs) == {}


def test_a_matrix_keeps_the_rows_of_other_runs_in_its_file(tmp_path):
    # a driver's earlier matrix and extra rows stay in the file until its final write
    sync0 = AccuracyRun("sync", "sequential", ("checkpoint_every=78",), 0)
    other = _row(AccuracyRun("tspipe", "tspipe", (), 5), 0.6)
    extra = {**other, "label": None, "metric": "teacher_drift_rel_l2"}
    first = {**_row(sync0, 0.7), "command": "the first matrix"}
    write_rows(tmp_path / "rows.jsonl", [first, other, extra])
    rows = run_matrix("byol", "accuracy", [sync0], tmp_path, command="a later matrix")  # kept: nothing runs
    assert [r["label"] for r in rows] == ["sync"]
    assert rows[0]["command"] == "the first matrix"  # a kept row still says what made it
    written = read_rows(tmp_path / "rows.jsonl")
    assert [(r["label"], r["seed"]) for r in written] == [("sync", 0), ("tspipe", 5), (None, 5)]


def test_a_left_over_run_folder_counts_only_when_it_would_be_reproduced(tmp_path):
    good, other = AccuracyRun("sync", "sequential", (), 0), AccuracyRun("tspipe", "tspipe", (), 0)
    for run, sha in ((good, HEAD), (other, ROOT_COMMIT)):  # the second: code of before the fingerprint
        (tmp_path / run.name).mkdir()
        row = {
            k: v for k, v in _row(run, 0.7, git_sha=sha).items() if k != "fingerprint"
        }  # as training writes it
        (tmp_path / run.name / "row.json").write_text(json.dumps(row))
    missing = AccuracyRun("sync", "sequential", (), 1)
    assert finished_runs("byol", "accuracy", tmp_path, [good, other, missing]) == {"sync-s0"}


def test_the_table_gives_the_gain_over_init_and_each_label_against_sync():
    rows = [
        {"label": label, "schedule": "s", "metric": "knn_top1", "seed": seed, "metric_value": value}
        for label, values in (
            ("sync", [0.70, 0.60, 0.65]),
            ("tspipe", [0.71, 0.61, 0.66]),
            ("init", [0.5, 0.5, 0.5]),
        )
        for seed, value in enumerate(values)
    ]
    text = paired_lines(rows)
    assert (
        "- sync - init (what training gained over each seed's initial weights, 3 seeds): +15.00 points"
        in text
    )
    assert "- tspipe - sync, paired by seed (3 seeds): +1.00 points, 95 % interval [+1.00, +1.00]" in text
    assert "gain: the interval lies above 0" in text and "init - sync" not in text
