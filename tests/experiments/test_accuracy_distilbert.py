"""`make accuracy-distilbert`'s driver: the summary and table come from rows only, and runs made
with another teacher are not kept."""

import json

import pytest

from core.metrics import read_rows
from experiments import accuracy_distilbert as driver


def _rows():
    common = {"method": "distilbert", "metric": "mlm_acc", "schedule": "sequential", "stages": 1}
    rows = []
    for seed, (distil, base) in enumerate([(0.40, 0.35), (0.42, 0.36), (0.41, 0.355)]):
        rows.append(
            {
                **common,
                "label": "distil-sequential",
                "seed": seed,
                "metric_value": distil,
                "evals": [{"mlm_ppl": 30.0 - seed}],
            }
        )
        rows.append(
            {**common, "label": "mlm-only", "seed": seed, "metric_value": base, "mlm_ppl": 40.0 - seed}
        )
    rows.append(
        {**common, "label": "teacher", "seed": 0, "metric_value": 0.45, "mlm_ppl": 25.0, "steps": 2000}
    )
    rows.append(
        {
            **common,
            "label": None,
            "metric": "max_param_diff",
            "metric_value": 0.0,
            "seed": 0,
            "relative_l2": 0.0,
            "steps": 300,
        }
    )
    return rows


def test_summary_pairs_distillation_with_mlm_alone_on_both_metrics():
    s = driver.summary(_rows())
    assert s["means"]["distil-sequential"]["seeds"] == 3
    assert s["means"]["mlm-only"]["ppl"] == pytest.approx(39.0)
    assert s["acc"]["mean"] == pytest.approx((0.05 + 0.06 + 0.055) / 3)
    assert s["acc"]["low"] > 0  # distillation wins on accuracy ...
    assert s["ppl"]["mean"] == pytest.approx(-10.0) and s["ppl"]["std"] == pytest.approx(0.0)
    assert "teacher" not in s["means"]  # ... and the teacher is no run to pair


def test_table_says_the_teacher_gap_and_the_bitwise_parity():
    text = driver.report(_rows(), "make accuracy-distilbert")
    assert "| mlm-only | 3 | 35.50 | 0.500 | 39.00 |" in text
    assert "masked-token accuracy +5.50 points [" in text and "(below 0: distillation better)" in text
    assert "masked-token accuracy +5.50 points [" in text and "perplexity -10.00 [-10.00, -10.00]" in text
    assert (
        "The teacher (2000 fine-tuning steps) against the student trained by masked-LM alone: +9.50 points"
        in text
    )
    assert "seed 0 (frozen teacher" in text and "largest parameter difference 0," in text


def test_runs_and_rows_of_another_teacher_are_dropped(tmp_path):
    root, rows = tmp_path / "runs", tmp_path / "out" / "rows.jsonl"
    (root / "distil-sequential-s0").mkdir(parents=True)
    rows.parent.mkdir()
    lines = [
        {"label": "mlm-only", "teacher_sha": "old"},
        {"label": "distil-sequential", "teacher_sha": "new"},
    ]
    lines.append({"label": "mlm-only", "seed": 1})  # no teacher recorded, and no marker: dropped
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert driver.forget_other_teacher(root, rows, "new")
    assert [r["label"] for r in read_rows(rows)] == ["distil-sequential"]
    assert not (root / "distil-sequential-s0").exists()
    assert (root / "teacher.sha").read_text().strip() == "new"
    # the same teacher: run folders and rows without a teacher (a matrix cut short) are kept
    (root / "mlm-only-s0").mkdir()
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines[1:]))
    assert not driver.forget_other_teacher(root, rows, "new")
    assert len(read_rows(rows)) == 2 and (root / "mlm-only-s0").exists()


def test_the_bitwise_row_is_reused_only_for_the_same_teacher_and_seed(tmp_path):
    old = {"metric": "max_param_diff", "seed": 0, "teacher_sha": "new", "metric_value": 0.0}
    base = {"model": "m", "device": "cpu"}
    assert driver.bitwise_row(tmp_path, 0, base, [old], "new") is old
    with pytest.raises(FileNotFoundError, match="delete the rows file"):
        driver.bitwise_row(tmp_path, 0, base, [{**old, "teacher_sha": "old"}], "new")
    with pytest.raises(FileNotFoundError):
        driver.bitwise_row(tmp_path, 1, base, [old], "new")


def test_file_sha_follows_the_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"teacher one")
    b.write_bytes(b"teacher two")
    assert driver.file_sha(a) != driver.file_sha(b) and len(driver.file_sha(a)) == 16


def test_a_missing_teacher_is_one_line(tmp_path, capsys):
    code = driver.main(["--out", str(tmp_path), f"teacher_path={tmp_path / 'none.pt'}"])
    assert code == 2
    assert "run `make teacher-distilbert`" in capsys.readouterr().err
