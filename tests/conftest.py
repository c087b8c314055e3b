"""Shared test fixtures and the one helper that starts a multi-process test worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "experiments" / "calibration" / "h200"


def launch_module(
    module: str, world: int, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` as ``world`` ranks (``core.launch``; one plain process
    when ``world`` is 1), one torch thread each, from the repository root (``env``: variables
    added to this process's environment).

    Returns:
        The completed process (stdout and stderr captured as text).
    """
    launcher = ["core.launch", "--nproc", str(world)] if world > 1 else []
    return subprocess.run(
        [sys.executable, "-m", *launcher, module, *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def calibration_dir() -> Path:
    return CALIBRATION


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Tests never try to download data (the machines have no internet)."""
    monkeypatch.setenv("TSPIPE_DOWNLOAD", "0")
