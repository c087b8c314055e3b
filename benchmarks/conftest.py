"""Micro-benchmarks of the engine's own costs (``make bench-micro``, pytest-benchmark): one
process, one torch thread, on an idle machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
