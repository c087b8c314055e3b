"""Steady host memory for timed runs: glibc's ``malloc`` told to keep what is freed.

PyTorch's CPU allocator asks ``malloc`` for every tensor. Left to its defaults, glibc serves a
block above a moving threshold (128 KiB at first, raised to the size of each large block freed)
with its own ``mmap`` and gives it back on ``free``, and gives the top of its heap back whenever
more than twice that threshold lies free there. The next step then faults the same memory in
again, page by page (the kernel zeroes each one; under a hypervisor each fault costs more
still), and since the thresholds follow what the process freed before, how much a run pays
depends on the runs before it in the same process. On a 2-vCPU AMD EPYC under KVM, the
synthetic bench (``python -m experiments.bench synthetic --rounds 3``, twice each way,
alternating) took 4.3-6.0 million minor page faults and 17-21 s of system time with the
defaults, and 0.74 million and 10-11 s with the settings below, and the rounds of a row spread
less.

:func:`keep_freed_memory` fixes both thresholds: blocks up to glibc's ceiling (32 MiB on a
64-bit machine) come from the heap, and the heap is not trimmed below 2 GiB of free top. A
process then keeps the memory it has used, which is what a benchmark's worker, running the
same steps again and again, wants.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit machines
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to about 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Make this process's ``malloc`` keep freed memory for reuse (see the module's text).

    Returns:
        True if glibc accepted both settings; False where there is no glibc ``mallopt``
        (not Linux, or another C library), and nothing changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a 32-bit machine refuses the 32 MiB threshold
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    trimmed = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mapped and trimmed
