"""Memory per stage: units alive at the peak, counted by hand for each schedule family."""

import pytest

from core.memory import stage_peaks
from core.schedules import build_schedule


def units(name, stages, micro, teacher="ema", pieces=None):
    built = build_schedule(name, stages, micro, teacher, 3, pieces)
    return [p.student_units for p in stage_peaks(built)]


def test_gpipe_holds_every_unit_and_1f1b_only_those_in_flight():
    assert units("gpipe", 4, 6) == [6, 6, 6, 6]
    assert units("1f1b", 4, 6) == [4, 3, 2, 1]  # N - s
    assert units("1f1b", 4, 2) == [2, 2, 2, 1]


def test_zb_holds_what_1f1b_holds_since_each_weight_half_follows_its_input_half():
    assert units("zb", 4, 6) == units("1f1b", 4, 6)
    # and so does tspipe-zbh1, whose student runs zb's order
    assert units("tspipe-zbh1", 4, 6) == units("1f1b", 4, 6)


def test_tspipe_holds_the_whole_mini_batch_and_a_split_backward_frees_at_the_weight_half():
    assert units("tspipe", 3, 4) == [4, 4, 4]
    assert units("tspipe-zb", 3, 4) == [4, 4, 4]
    # backward pieces free a unit piece by piece: the peak stays the units alive before them
    built = build_schedule("gpipe", 2, 2, "ema", 1, backward_pieces=2)
    assert [p.student_units for p in stage_peaks(built)] == [2, 2]


def test_bytes_add_activations_teacher_outputs_and_static_memory():
    built = build_schedule("gpipe", 2, 2, "ema", 3)
    peaks = stage_peaks(built, activation_bytes=[10.0, 20.0], teacher_bytes=3.0, static_bytes=[100.0, 200.0])
    assert peaks[0].bytes == pytest.approx(2 * 10 + 100)
    # the last stage holds both units' teacher outputs with both units' activations
    assert peaks[1].teacher_units == 2 and peaks[1].bytes == pytest.approx(2 * 20 + 2 * 3 + 200)
    with pytest.raises(ValueError, match="one activation size"):
        stage_peaks(built, activation_bytes=[1.0])
