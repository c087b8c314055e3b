"""Measured over simulated time per op kind and per step, from a pair of timelines built by hand."""

from __future__ import annotations

import pytest

from analysis.fidelity import steady, timeline_tables
from core.metrics import write_rows


def _record(stage: int, op: str, batch: int, start: float, ms: float) -> dict:
    """A timeline record of unit 0 of ``batch``, ``ms`` long from ``start``."""
    return {
        "stage": stage,
        "op": op,
        "batch": batch,
        "microbatch": 0,
        "part": None,
        "start_ms": start,
        "end_ms": start + ms,
    }


def _timeline(tf: float, sb: float, batches: int = 6, tf1: float | None = None) -> list[dict]:
    """Two stages side by side, each running one TF (``tf1`` on stage 1 if given), one SB and
    OPT (1 ms) per mini-batch."""
    out, t = [], 0.0
    for b in range(batches):
        for stage in (0, 1):
            start = t
            teacher = tf if tf1 is None or stage == 0 else tf1
            for op, ms in (("TF", teacher), ("SB", sb), ("OPT", 1.0)):
                out.append(_record(stage, op, b, start, ms))
                start += ms
        t = start
    return out


def test_ratios_per_kind_and_per_step(tmp_path):
    write_rows(tmp_path / "timelines" / "gpipe_N2_M1.measured.jsonl", _timeline(tf=4.0, sb=3.0))
    write_rows(tmp_path / "timelines" / "gpipe_N2_M1.simulated.jsonl", _timeline(tf=2.0, sb=3.0))
    write_rows(
        tmp_path / "timelines" / "tspipe_N2_M1.measured.jsonl", _timeline(1.0, 1.0)
    )  # no pair: skipped
    table = timeline_tables(tmp_path, warmup=1)["kinds"]
    assert list(table["run"]) == ["gpipe_N2_M1"]
    line = table.iloc[0]
    assert (
        line["TF"] == pytest.approx(2.0)
        and line["SB"] == pytest.approx(1.0)
        and line["OPT"] == pytest.approx(1.0)
    )
    assert line["SF"] is None and line["LOSS"] is None  # no such ops
    assert line["step"] == pytest.approx(8.0 / 6.0)  # a step is 4 + 3 + 1 against 2 + 3 + 1
    kinds, step = steady(_timeline(2.0, 3.0), first=2)
    assert kinds["TF"] == pytest.approx(4.0) and step == pytest.approx(6.0)
    with pytest.raises(ValueError):
        steady(_timeline(2.0, 3.0, batches=3), first=2)


def test_by_stage_shows_work_on_the_wrong_stage(tmp_path):
    # stage 0's teacher forward runs at half the simulated time, stage 1's at 1.5 times: the sum
    # over the stages is right (1 + 3 against 2 + 2), the stages are not
    write_rows(tmp_path / "timelines" / "gpipe_N2_M1.measured.jsonl", _timeline(tf=1.0, sb=3.0, tf1=3.0))
    write_rows(tmp_path / "timelines" / "gpipe_N2_M1.simulated.jsonl", _timeline(tf=2.0, sb=3.0))
    tables = timeline_tables(tmp_path, warmup=1)
    assert tables["kinds"].iloc[0]["TF"] == pytest.approx(1.0)
    stages = tables["stages"].set_index("stage")
    assert list(stages["run"]) == ["gpipe_N2_M1"] * 2
    assert stages.loc[0, "TF"] == pytest.approx(0.5) and stages.loc[1, "TF"] == pytest.approx(1.5)
    assert stages.loc[0, "SB"] == pytest.approx(1.0) and stages.loc[1, "OPT"] == pytest.approx(1.0)
    assert stages.loc[0, "LOSS"] is None
    assert list(tables["gaps"]["run"]) == ["gpipe_N2_M1"]


def _row(schedule: str, stages: int, micro: int, error: float | None) -> dict:
    return {"schedule": schedule, "stages": stages, "microbatches": micro, "prediction_error": error}


def test_the_error_summary_counts_pipelined_rows_within_the_goal():
    import pandas as pd

    from analysis.fidelity import error_summary
    from analysis.report import fidelity_section

    rows = [
        _row("sequential", 1, 1, 0.30),  # one process: not a pipelined row
        _row("gpipe", 2, 1, 0.05),
        _row("gpipe", 2, 4, -0.12),  # the largest miss
        _row("tspipe", 2, 2, 0.10),  # on the goal: within
        _row("torch-1f1b", 2, 2, 0.02),  # the torch peer counts
        _row("ddp", 2, 1, 0.25),  # a model, reported apart
        _row("mp", 2, 1, None),  # no prediction: left out
    ]
    summary = error_summary({"byol": pd.DataFrame(rows), "empty": pd.DataFrame([])})
    assert summary.to_dict("records") == [
        {
            "bench": "byol",
            "within": 3,
            "rows": 4,
            "in_rounds": None,  # these rows carry no rounds' range
            "median": pytest.approx(0.035),  # signed: the simulator faster on the whole
            "median_abs": pytest.approx(0.075),
            "worst": pytest.approx(-0.12),
            "worst_run": "gpipe M=4",
            "ddp": pytest.approx(0.25),
            "at_speed_rows": 0,  # no row carries a prediction at the run's speed
            "within_at_speed": 0,
            "median_at_speed": None,
        }
    ]
    twice = pd.concat([pd.DataFrame(rows)] * 2)  # an index with repeats (frames put together)
    assert error_summary({"byol": twice}).iloc[0]["worst"] == pytest.approx(-0.12)
    section = fidelity_section({"byol": pd.DataFrame(rows)})
    assert "| byol | 3 of 4 |" in section and "gpipe M=4" in section
    assert fidelity_section({}) == ""


def test_predictions_inside_the_measured_rounds_are_counted():
    import pandas as pd

    from analysis.fidelity import error_summary
    from analysis.report import fidelity_section

    def measured(schedule, error, low, high):  # 100 samples/s measured, rounds low..high
        return {
            **_row(schedule, 2, 2, error),
            "samples_per_s": 100.0,
            "predicted_samples_per_s": 100.0 * (1 + error),
            "samples_per_s_min": low,
            "samples_per_s_max": high,
        }

    rows = [
        measured("gpipe", 0.12, 90.0, 115.0),  # 112 predicted: a miss, but inside the rounds
        measured("1f1b", 0.05, 98.0, 103.0),  # 105: within the goal, faster than every round
        measured("tspipe", -0.01, 95.0, 101.0),  # 99: both
    ]
    summary = error_summary({"kd": pd.DataFrame(rows)}).iloc[0]
    assert (summary["within"], summary["in_rounds"], summary["rows"]) == (2, 2, 3)
    assert "| kd | 2 of 3 | 2 of 3 | 5.000 | 5.000 | 12.00 | gpipe M=2 |" in fidelity_section(
        {"kd": pd.DataFrame(rows)}
    )


def _messages_timeline(batches: int = 6) -> list[dict]:
    """Two stages, 2 ms actions, a mini-batch every 6.5 ms: stage 0 runs TF then OPT, 0.4 ms after
    its TF (a send to stage 1); stage 1 runs TF, LOSS and OPT, 0.1 ms between them and 0.3 ms
    before its next TF (a receive). Stage 0 then waits 2.1 ms with no message."""
    out, t = [], 0.0
    for b in range(batches):
        plan = {0: [("TF", 0.4), ("OPT", 0.1)], 1: [("TF", 0.1), ("LOSS", 0.1), ("OPT", 0.3)]}
        for stage, ops in plan.items():
            start = t
            for op, after in ops:
                out.append(_record(stage, op, b, start, 2.0))
                start += 2.0 + after
        t += 6.5
    return out


def test_gaps_are_told_apart_by_the_messages_between_actions(tmp_path):
    from analysis.fidelity import message_gaps

    gaps = message_gaps(_messages_timeline(), first=1)
    assert gaps["send"] == pytest.approx(0.4)  # after stage 0's TF, whose output goes to stage 1
    assert gaps["receive"] == pytest.approx(0.3)  # before stage 1's TF, whose input stage 0 sends
    assert gaps["none"] == pytest.approx(0.1) and gaps["both"] is None  # 0.1, 0.1 and 2.1 per batch
    write_rows(tmp_path / "timelines" / "tspipe_N2_M1.measured.jsonl", _messages_timeline())
    write_rows(tmp_path / "timelines" / "tspipe_N2_M1.simulated.jsonl", _timeline(1.0, 1.0))
    line = timeline_tables(tmp_path, warmup=0)["gaps"].iloc[0]
    assert line["send"] == pytest.approx(0.4) and line["none simulated"] == pytest.approx(0.0)


def test_round_errors_and_the_plot_of_every_row(tmp_path):
    import pandas as pd

    from analysis.fidelity import pipelined_rows, round_errors
    from analysis.report import fidelity_section

    row = {**_row("gpipe", 2, 2, 0.05), "round_predicted_samples_per_s": [110.0, 99.0]}
    assert round_errors(row) == []  # no measured rounds: nothing to pair
    row["round_samples_per_s"] = [100.0, 110.0]
    assert round_errors(row) == pytest.approx([0.10, -0.10])
    rows = pd.DataFrame([row, _row("ddp", 2, 1, 0.25), _row("sequential", 1, 1, 0.3)])
    assert list(pipelined_rows(rows)["schedule"]) == ["gpipe"]
    section = fidelity_section({"byol": rows}, tmp_path)
    assert "![the simulator's error on every measured pipelined row](fidelity_errors.png)" in section
    assert (tmp_path / "fidelity_errors.png").stat().st_size > 0
    assert "fidelity_errors.png" not in fidelity_section({"byol": rows})  # no folder, no plot


def test_errors_at_the_runs_speed_are_counted_apart(tmp_path):
    import pandas as pd

    from analysis.fidelity import error_summary
    from analysis.report import fidelity_section

    rows = [
        {**_row("gpipe", 2, 1, 0.15), "prediction_error_at_speed": 0.04},
        {**_row("gpipe", 2, 2, 0.08), "prediction_error_at_speed": -0.11},
        {**_row("tspipe", 2, 2, 0.02), "prediction_error_at_speed": None},  # no probes: left out
        {**_row("ddp", 2, 1, 0.30), "prediction_error_at_speed": 0.01},  # a model: not counted
    ]
    summary = error_summary({"kd": pd.DataFrame(rows)}).iloc[0]
    assert (summary["within"], summary["rows"]) == (2, 3)  # as predicted: 0.15 misses
    assert (summary["within_at_speed"], summary["at_speed_rows"]) == (1, 2)  # at speed: -0.11 misses
    assert summary["median_at_speed"] == pytest.approx(-0.035)
    assert "| kd | 2 of 3 |" in fidelity_section({"kd": pd.DataFrame(rows)})
    assert "| 1 of 2 | -3.500 |" in fidelity_section({"kd": pd.DataFrame(rows)})
    section = fidelity_section({"kd": pd.DataFrame(rows)}, tmp_path)  # the plot marks them too
    assert "a cross (where the row carries it)" in section and (tmp_path / "fidelity_errors.png").exists()
