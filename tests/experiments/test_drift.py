"""The machine-speed probe around each bench run: the speed at a run follows the drift over
neighbouring runs, not one probe's noise, and scales a round's prediction the right way."""

import pytest

from experiments.drift import probe_ms, run_speeds, speed_factors


def test_a_run_speed_is_the_median_of_its_neighbours_probes():
    # three runs, two rounds; run 1 has no probe in round 0, run 2 none at all
    probes = [[[10.0, 12.0], [20.0, 20.0]], [None, [30.0, 34.0]], [None, None]]
    assert run_speeds(probes, window=0) == [[11.0, 20.0], [None, 32.0], [None, None]]
    # window 1: run 1 sees runs 0..2, run 2 sees runs 1..2
    assert run_speeds(probes, window=1) == [[11.0, 25.0], [11.0, 25.0], [None, 32.0]]
    # one outlying probe among its neighbours' does not move the speed
    noisy = [[[10.0, 10.0]], [[10.0, 40.0]], [[10.0, 10.0]]]
    assert run_speeds(noisy, window=1)[1] == [10.0]
    with pytest.raises(ValueError, match="window must be >= 0"):
        run_speeds(probes, window=-1)


def test_a_slower_machine_at_the_run_lowers_the_prediction():
    # calibration probed at 10 ms, the run at 12.5 ms: 0.8 of the samples/s predicted
    assert speed_factors([10.0, 10.0], [12.5, 10.0]) == pytest.approx([0.8, 1.0])
    assert speed_factors([10.0, None], [12.5, 10.0]) is None  # a round without its probe
    assert speed_factors(None, [12.5]) is None and speed_factors([10.0], [10.0, 10.0]) is None


def test_the_probe_times_its_piece():
    calls = []
    ms = probe_ms(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4 and ms >= 0.0  # one untimed call, three timed; one process: no reduce
    with pytest.raises(ValueError, match="at least one timed call"):
        probe_ms(lambda: None, repeats=0)
