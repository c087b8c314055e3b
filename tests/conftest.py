"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "experiments" / "calibration" / "h200"


@pytest.fixture
def calibration_dir() -> Path:
    return CALIBRATION


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Tests never try to download data (the machines have no internet)."""
    monkeypatch.setenv("TSPIPE_DOWNLOAD", "0")
