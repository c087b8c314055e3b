"""The prepared GPU run's dry run on CPU (``make gpu-check DEVICE=cpu``): every part runs with
tiny shapes and writes what the GPU run writes; the time box skips what does not fit."""

from __future__ import annotations

import json
import tarfile

import pandas as pd

from analysis.gpu import gpu_run_section
from core.calibration import load_calibration
from experiments.gpu_run import PAPER, PAPER_PRESETS, Clock, main, paper_order, part_file
from methods.registry import get_method


def test_dry_run_writes_every_part(tmp_path):
    assert main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "log.json").read_text())
    assert [p["status"] for p in log["parts"]] == ["done"] * len(log["parts"])
    assert {p["part"].split()[0] for p in log["parts"]} == {
        "overhead",
        "train",
        "multiproc",
        "compiled",
        "calibrate",
    }
    errors = [json.loads(x) for x in (tmp_path / "multiproc" / "errors.jsonl").read_text().splitlines()]
    assert [(r["schedule"], r["processes"]) for r in errors] == [("gpipe", 2), ("tspipe", 2)]
    assert all(r["within"] for r in errors)
    assert "| 16 |" in (tmp_path / "compiled" / "table.md").read_text()
    assert load_calibration(tmp_path / "calibration" / "kd_tiny-compiled_mbsweep_fp32.json").sweep
    for method in ("byol", "moco_v3", "soft_target", "distilbert"):
        rows = [
            json.loads(x) for x in (tmp_path / "overhead" / method / "rows.jsonl").read_text().splitlines()
        ]
        assert [r["runner"] for r in rows] == ["plain-loop", "engine-sequential"]
        assert all(r["simulated"] is False and r["step_ms"] > 0 for r in rows)
    train = json.loads((tmp_path / "train" / "rows.jsonl").read_text().splitlines()[0])
    assert train["loss_went_down"] and len(train["losses"]) == 4
    mapping = pd.read_csv(tmp_path / "paper_calibrations.csv")
    assert sorted(mapping["method"]) == ["byol", "distilbert", "moco_v3", "soft_target"]
    assert list(mapping["tspipe_over_mp"]) == sorted(mapping["tspipe_over_mp"], reverse=True)
    for name in mapping["calibration"]:
        assert load_calibration(tmp_path / "calibration" / name).pair.endswith("-tiny")
    section = gpu_run_section(tmp_path)  # the report's account of the run
    assert "| byol |" in section and "| soft_target |" in section and "(down)" in section
    assert section.count("-tiny |") == 4
    assert "owed" in gpu_run_section(tmp_path / "missing")


def test_time_box_skips_what_does_not_fit(tmp_path):
    archive = tmp_path / "packed" / "gpu.tgz"
    assert (
        main(
            ["--device", "cpu", "--out", str(tmp_path / "gpu"), "--budget-s", "0", "--archive", str(archive)]
        )
        == 0
    )
    with tarfile.open(archive) as tar:  # everything in one file, for a machine that returns few
        assert "gpu/log.json" in tar.getnames()
    tmp_path = tmp_path / "gpu"
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["parts"] and all(p["status"].startswith("skipped") for p in log["parts"])
    assert not (tmp_path / "paper_calibrations.csv").exists()


def test_every_paper_row_has_a_preset():
    rows = paper_order()
    assert len(rows) == len(pd.read_csv(PAPER)) and [r[3] for r in rows] == sorted(
        (r[3] for r in rows), reverse=True
    )
    for method, teacher, student, _ in rows:
        assert PAPER_PRESETS[(method, teacher, student)] in get_method(method).presets


def test_no_gpu_is_refused(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_an_isolated_part_runs_in_a_child_and_is_killed_at_its_box(tmp_path):
    clock = Clock(600, isolate=True, child=["--device", "cpu", "--out", str(tmp_path)], out=tmp_path)
    result = clock.run("train byol", 1, lambda: None, box_s=300)
    assert result["loss_went_down"] and json.loads(part_file(tmp_path, "train byol").read_text()) == result
    assert clock.run("train byol", 1, lambda: None, box_s=0.5) is None  # no time to import torch
    assert clock.log[-1]["status"].startswith("failed: TimeoutError: killed after its box")
    assert clock.run("no such part", 1, lambda: None) is None
    assert "exited 1" in clock.log[-1]["status"]
