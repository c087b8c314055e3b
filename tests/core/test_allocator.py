"""``core.allocator``: with glibc told to keep freed memory, a step that allocates and frees the
same tensors again faults no page in; with glibc's defaults the same pattern faults every page
in each time (so the check can tell the two apart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# ten 4 MiB tensors made, touched and freed, five times after two rounds of warm-up; prints the
# minor page faults of the five
_PATTERN = """
import resource, sys, torch
from core.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rounds(n):
    for _ in range(n):
        xs = [torch.ones(2**20) for _ in range(10)]
        del xs
x = torch.ones(2**20)
del x
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(5)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PATTERN, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="needs glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    pages = 5 * 10 * 4 * 2**20 // 4096  # what the five rounds touch
    assert _faults("default") > pages // 2  # the defaults give the heap's top back each round
    assert _faults("keep") < pages // 50


def test_refused_quietly_off_linux(monkeypatch):
    from core import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
