"""Gantt charts from simulated and measured records."""

from analysis.timeline import plot_timelines, window
from core.cost_model import unit_costs
from core.schedules import build_schedule
from core.simulate import simulate


def test_gantt_png_from_simulated_records(tmp_path):
    built = build_schedule("tspipe", 3, 4, "ema", 4)
    records = [r.to_dict() for r in simulate(built, unit_costs(3), 4).records]
    out = plot_timelines([("tspipe", records), ("tspipe again", window(records, 1, 2))], tmp_path / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_window_clips_to_batch_ends():
    built = build_schedule("gpipe", 2, 2, "ema", 3)
    records = [r.to_dict() for r in simulate(built, unit_costs(2), 2).records]
    clipped = window(records, 1, 1)
    opt_ends = {r["batch"]: r["end_ms"] for r in records if r["op"] == "OPT" and r["stage"] == 0}
    assert min(r["start_ms"] for r in clipped) >= opt_ends[0] - 1e-9
    assert {r["batch"] for r in clipped if r["op"] == "SF"} == {1}
