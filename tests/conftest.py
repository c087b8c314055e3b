"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "experiments" / "calibration" / "h200"


@pytest.fixture
def calibration_dir() -> Path:
    return CALIBRATION
