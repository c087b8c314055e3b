"""What a wait costs the stage that waited, on a CPU host: a core that idled (blocked in a
receive) runs the next piece of work slower than a core that kept working, more so the longer it
idled, up to a limit (on a shared virtual machine the idle core goes to other work and comes back
with its caches cold). :func:`probe_wake` times one piece of work back to back and after idles of
several lengths, interleaved so slow drifts of the machine hit every length alike, and fits the
extra time as ``wake_ms x (1 - exp(-idle / wake_tau_ms))``: the simulator adds that to a stage
after each receive that waited (:attr:`core.link.Link.wake_ms`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

IDLES_MS = (10.0, 30.0, 100.0)
TAUS_MS = (5.0, 10.0, 20.0, 30.0, 50.0, 80.0, 120.0, 200.0)


def resume_extra_ms(
    work: Callable[[], object], idles_ms: Sequence[float] = IDLES_MS, repeats: int = 7
) -> dict[float, float]:
    """Per idle length, the median time of ``work`` right after idling that long, less its
    median time right after another ``work`` (never below 0), in ms."""
    if repeats < 1 or not idles_ms or min(idles_ms) <= 0:
        raise ValueError(f"need repeats >= 1 and idles > 0, got {repeats} and {list(idles_ms)}")
    times: dict[float, list[float]] = {g: [] for g in (0.0, *idles_ms)}
    work()  # warm up
    for _ in range(repeats):
        for g in (*idles_ms, 0.0):  # 0 last: right after the work that ended the longest idle
            if g:
                time.sleep(g / 1e3)
            start = time.perf_counter()
            work()
            times[g].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(times[0.0])
    return {g: max(statistics.median(times[g]) - base, 0.0) for g in idles_ms}


def fit_wake(extra_ms: dict[float, float]) -> tuple[float, float]:
    """``(wake_ms, wake_tau_ms)`` of ``wake_ms x (1 - exp(-idle / wake_tau_ms))`` closest (least
    squares) to the measured extra times, the time constant from :data:`TAUS_MS`."""
    best = (math.inf, 0.0, TAUS_MS[0])
    for tau in TAUS_MS:
        shape = {g: 1.0 - math.exp(-g / tau) for g in extra_ms}
        norm = sum(s * s for s in shape.values())
        ms = max(sum(shape[g] * e for g, e in extra_ms.items()) / norm, 0.0) if norm > 0 else 0.0
        err = sum((ms * shape[g] - e) ** 2 for g, e in extra_ms.items())
        if err < best[0]:
            best = (err, ms, tau)
    return best[1], best[2]


def probe_wake(
    work: Callable[[], object], idles_ms: Sequence[float] = IDLES_MS, repeats: int = 7
) -> tuple[float, float]:
    """Measure and fit what idling costs ``work`` on this core: ``(wake_ms, wake_tau_ms)``."""
    return fit_wake(resume_extra_ms(work, idles_ms, repeats))
