"""Micro-benchmarks of the engine's own costs (``make bench-micro``, pytest-benchmark): one
process, one torch thread, on an idle machine, with freed host memory kept as in every bench
process (:func:`core.allocator.keep_freed_memory`), so the engine and the plain loop it is set
against both run as a bench's worker runs."""

import pytest
import torch

from core.allocator import keep_freed_memory


@pytest.fixture(autouse=True, scope="session")
def _kept_memory():
    keep_freed_memory()  # once per process: glibc's thresholds cannot be set back, nor need to be


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
