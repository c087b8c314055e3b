"""The wake probe: a piece of work that runs slower after its core idled, by a known curve, is
measured and fitted back."""

import math
import time

import pytest

from core.wake_probe import fit_wake, probe_wake, resume_extra_ms


def test_the_fit_recovers_a_known_curve():
    extra = {g: 3.0 * (1 - math.exp(-g / 30.0)) for g in (10.0, 30.0, 100.0)}
    ms, tau = fit_wake(extra)
    assert ms == pytest.approx(3.0) and tau == 30.0
    assert fit_wake({10.0: 0.0, 30.0: 0.0, 100.0: 0.0})[0] == 0.0  # no penalty: none fitted


class _SlowAfterIdle:
    """1 ms of busy work, plus 2 ms x (1 - exp(-idle / 20 ms)) after an idle since its last end."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self) -> None:
        idle_ms = (time.perf_counter() - self.last) * 1e3
        until = time.perf_counter() + (1.0 + 2.0 * (1 - math.exp(-idle_ms / 20.0))) / 1e3
        while time.perf_counter() < until:
            pass
        self.last = time.perf_counter()


def test_the_probe_measures_what_idling_costs():
    extra = resume_extra_ms(_SlowAfterIdle(), repeats=5)
    assert extra[10.0] < extra[30.0] < extra[100.0] and 1.6 < extra[100.0] < 2.6
    ms, tau = probe_wake(_SlowAfterIdle(), repeats=5)
    assert 1.6 < ms < 2.6 and 10.0 <= tau <= 30.0
    # work that does not care how long it idled
    assert probe_wake(lambda: None, repeats=3)[0] < 0.05
    with pytest.raises(ValueError):
        resume_extra_ms(lambda: None, idles_ms=(0.0,))
