"""One message's round trip through the engine's transport (``TorchTransport`` over gloo, two
processes on this machine), by message size."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from core.runtime import TorchTransport

ROOT = Path(__file__).resolve().parent.parent
SIZES = [1 << 10, 1 << 16, 1 << 20, 1 << 24]  # bytes of float32 payload
ROUNDS, WARMUP = 20, 3


@pytest.fixture(scope="module")
def transport():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    echo = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.echo", ",".join(map(str, SIZES)), str(ROUNDS + WARMUP)],
        cwd=ROOT,
        env=env,
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=2)
    channel = TorchTransport(torch.device("cpu"), timeout_s=120)
    yield channel
    channel.close()
    dist.destroy_process_group()
    echo.wait(timeout=60)


@pytest.mark.parametrize("nbytes", SIZES, ids=lambda n: f"{n // 1024}KiB")
def test_message_round_trip(benchmark, transport, nbytes):
    message = torch.randn(nbytes // 4)
    benchmark.group = "transport round trip"
    benchmark.extra_info["bytes"] = nbytes

    def round_trip():
        transport.send("SF", 1, message)
        transport.recv("SF", 1, key=nbytes)

    benchmark.pedantic(round_trip, rounds=ROUNDS, warmup_rounds=WARMUP)
