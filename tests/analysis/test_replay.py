"""The replay of a kept run on its own compute (analysis.replay), on runs the simulator itself made:
a run that is exactly a dry run replays to itself, a stall the model does not know shows as
replay error, a timeline of another schedule is refused."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest

from analysis.replay import (
    read_replay,
    replay_bench,
    replay_frames,
    replay_section,
    replay_summary,
    run_table,
    write_replay,
)
from core.bench import cost_model
from core.link import Link
from core.profile import BlockCosts
from core.schedules import build_schedule
from core.simulate import simulate

BATCHES, WARMUP = 8, 2
BALANCE = [2, 2]
LINK = Link(gbps=2.0, latency_us=80.0, overhead_us=100.0, cpu_gbps=5.0)


def _costs(micro: int, scale: float = 1.0) -> BlockCosts:
    """Four blocks of uneven cost (times ``scale``), 1 MB messages, measured at one unit of a
    16-sample batch."""
    return BlockCosts(
        samples=16 // micro,
        teacher_fwd=[scale * x for x in (1.0, 1.5, 1.2, 0.8)],
        student_fwd=[scale * x for x in (2.0, 2.5, 2.2, 1.8)],
        student_bwd=[scale * x for x in (3.0, 4.0, 3.5, 2.5)],
        teacher_bytes=[1e6] * 4,
        student_bytes=[1e6] * 4,
        loss_ms=scale * 0.5,
        opt_ms=[scale * 0.3] * 4,
        param_bytes=[1e4] * 4,
    )


def _write_bench(
    folder: Path, runs: dict[str, tuple[dict, list[dict]]], micro: int, link: Link = LINK
) -> None:
    """A bench folder as ``experiments.bench`` keeps it: ``costs.json``, ``runs/N2.spec.json`` and
    one ``runs/<name>.r<k>.json`` per round (``runs``: name -> (pipeline settings, rounds'
    compute records))."""
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "costs.json").write_text(json.dumps({str(micro): _costs(micro).to_dict()}))
    spec = {
        "settings": {"warmup": WARMUP},
        "runs": [{"name": n, "pipeline": p} for n, (p, _) in runs.items()],
    }
    (folder / "runs" / "N2.spec.json").write_text(json.dumps(spec))
    extra = {"link": asdict(link), "balance": BALANCE, "teacher_balance": BALANCE}
    for name, (_, rounds) in runs.items():
        for k, records in enumerate(rounds):
            ends = sorted({r["batch"] for r in records})
            step_end_s = [max(r["end_ms"] for r in records if r["batch"] == b) / 1e3 for b in ends]
            result = {"step_end_s": step_end_s, "records": records, "extra": extra}
            (folder / "runs" / f"{name}.r{k}.json").write_text(json.dumps(result))


def _simulated_run(
    schedule: str, micro: int, views: int, teacher: str, scale: float = 1.0
) -> tuple[dict, list[dict]]:
    """A run the simulator made (every compute ``scale`` times the profile's): its pipeline
    settings and its compute actions' records."""
    pipeline = {
        "schedule": schedule,
        "stages": 2,
        "microbatches": micro,
        "backward_pieces": None,
        "teacher_early": None,
        "teacher_lookahead": None,
    }
    built = build_schedule(schedule, 2, micro, teacher, BATCHES, None, views)
    model = cost_model(_costs(micro, scale), BALANCE, BALANCE, LINK)
    result = simulate(built, model, 16)
    records = [r.to_dict() for r in result.records]
    ops = {"TF", "SF", "SB", "SW", "LOSS", "OPT"}
    return pipeline, [r for r in records if r["op"] in ops]


@pytest.mark.parametrize(
    "schedule,views,teacher",
    [
        ("gpipe", 1, "frozen"),
        ("1f1b", 2, "ema"),
        ("tspipe", 2, "ema"),
        ("tspipe-zb", 1, "ema"),
        ("zb", 1, "frozen"),
    ],
)
def test_a_dry_run_replays_to_itself(tmp_path, schedule, views, teacher):
    run = _simulated_run(schedule, 2, views, teacher)
    _write_bench(tmp_path, {f"{schedule}_N2_M2": (run[0], [run[1], run[1]])}, micro=2)
    df = replay_bench(tmp_path)
    assert len(df) == 1 and df.iloc[0]["rounds"] == 2
    assert df.iloc[0]["replay_error"] == pytest.approx(0.0, abs=1e-9)
    assert df.iloc[0]["compute_spread"] == pytest.approx(0.0, abs=1e-9)


def test_a_stall_the_model_does_not_know_is_replay_error(tmp_path):
    pipeline, records = _simulated_run("gpipe", 2, 1, "ema")
    ends = [max(r["end_ms"] for r in records if r["batch"] == b) for b in range(BATCHES)]
    step = ends[4] - ends[3]  # gpipe flushes: every steady step alike
    gap = 0.25 * step  # every mini-batch starts this much later than the one before would let it
    stalled = [
        {**r, "start_ms": r["start_ms"] + gap * r["batch"], "end_ms": r["end_ms"] + gap * r["batch"]}
        for r in records
    ]
    # the second round's compute 20 % slower throughout (a slower machine): no replay error
    slower = _simulated_run("gpipe", 2, 1, "ema", scale=1.2)[1]
    _write_bench(tmp_path, {"gpipe_N2_M2": (pipeline, [stalled, slower])}, micro=2)
    rows = pd.DataFrame(
        [
            {
                "schedule": "gpipe",
                "stages": 2,
                "microbatches": 2,
                "round_samples_per_s": [100.0, 100.0],
                "round_predicted_samples_per_s": [130.0, 130.0],
            }
        ]
    )
    replayed = replay_bench(tmp_path, rows)
    row = replayed.iloc[0]
    errors = row["round_replay_errors"]
    assert errors[0] == pytest.approx(gap / step)
    assert errors[1] == pytest.approx(0.0, abs=1e-9)
    assert row["compute_spread"] == pytest.approx(0.2)
    # what is left of the prediction error once the replay's is taken out
    table = run_table(replayed).iloc[0]  # a bench's TABLE.md, in percentages
    assert table["run"] == "gpipe_N2_M2" and table["compute spread %"] == pytest.approx(20.0)
    assert table["rounds' replay errors %"] == f"0.0 to {100 * gap / step:.1f}"
    assert row["compute_part"] == pytest.approx(((1.3 / (1 + errors[0])) + 1.3 / (1 + errors[1])) / 2 - 1.0)


def test_message_bytes_beside_the_work_are_not_charged_again(tmp_path):
    """A run's timed compute already holds what the messages' bytes cost it: the replay must not
    charge ``beside_gbps`` at the sends and receives too."""
    pipeline, records = _simulated_run("1f1b", 2, 1, "ema")
    for name, link in (("plain", LINK), ("beside", replace(LINK, beside_gbps=0.5))):
        _write_bench(tmp_path / name, {"1f1b_N2_M2": (pipeline, [records])}, micro=2, link=link)
    plain, beside = (replay_bench(tmp_path / n).iloc[0]["replay_error"] for n in ("plain", "beside"))
    assert beside == pytest.approx(plain) == pytest.approx(0.0, abs=1e-9)


def test_a_timeline_of_another_schedule_is_refused(tmp_path):
    pipeline, records = _simulated_run("1f1b", 2, 1, "ema")
    _write_bench(tmp_path, {"gpipe_N2_M2": ({**pipeline, "schedule": "gpipe"}, [records])}, micro=2)
    with pytest.raises(ValueError, match="has the actions its timeline timed"):
        replay_bench(tmp_path)


def test_summary_and_section(tmp_path):
    run = _simulated_run("tspipe", 2, 2, "ema")
    _write_bench(tmp_path / "bench", {"tspipe_N2_M2": (run[0], [run[1]])}, micro=2)
    summary = replay_summary({"bench": replay_bench(tmp_path / "bench")}, goal=0.10)
    assert summary.iloc[0][["runs", "within"]].tolist() == [1, 1]
    assert write_replay(tmp_path / "bench") == tmp_path / "bench" / "replay.jsonl"
    replays, stale = replay_frames(["bench", "other"], [tmp_path / "none", tmp_path])
    assert list(replays) == ["bench"] and stale == []  # a bench without a kept replay is left out
    assert "| bench | 1 of 1 |" in replay_section(replays, goal=0.10)
    assert replay_section({}, goal=0.10) == ""


def test_the_kept_replay_goes_with_its_rows(tmp_path):
    """The runs are not committed, the replay is: read back as written while the rows it was
    made with stay, stale once they change, so a report never shows another measurement's."""
    run = _simulated_run("gpipe", 2, 1, "ema")
    _write_bench(tmp_path / "bench", {"gpipe_N2_M2": (run[0], [run[1], run[1]])}, micro=2)
    rows = tmp_path / "bench" / "rows.jsonl"
    rows.write_text('{"schedule": "gpipe"}\n')
    assert read_replay(tmp_path / "bench")[1] == "missing"
    write_replay(tmp_path / "bench")
    kept, state = read_replay(tmp_path / "bench")
    assert state == "current"
    pd.testing.assert_frame_equal(kept, replay_bench(tmp_path / "bench"))
    rows.write_text('{"schedule": "gpipe", "samples_per_s": 1.0}\n')  # re-measured since
    frame, state = read_replay(tmp_path / "bench")
    assert state == "stale" and frame.empty
    replays, stale = replay_frames(["bench"], [tmp_path])
    assert replays == {} and stale == ["bench"]
    assert "stale: the replay of `results/bench/`" in replay_section(replays, 0.10, stale)


def test_a_run_kept_without_its_timeline_is_left_out(tmp_path):
    run = _simulated_run("gpipe", 2, 1, "ema")
    bare = ({**run[0], "schedule": "1f1b"}, [[]])  # timelines off: nothing to replay, not an error
    _write_bench(tmp_path, {"gpipe_N2_M2": (run[0], [run[1]]), "1f1b_N2_M2": bare}, micro=2)
    assert list(replay_bench(tmp_path)["schedule"]) == ["gpipe"]
