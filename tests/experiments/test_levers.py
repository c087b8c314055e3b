"""The levers exploration: its partition climb (the planner's search, unbounded) never ends
slower than it starts, and it prints every schedule under each lever with the family's edge."""

from __future__ import annotations

from core.calibration import load_calibration
from core.link import Link
from core.paper_scale import calibration_partition
from core.partition_search import search_partition
from experiments.levers import climb, main


def test_the_climb_starts_cost_balanced_and_never_ends_slower(calibration_dir):
    cal = load_calibration(calibration_dir / "kd_resnet152_to_resnet50_bf16.json", "realistic")
    link = Link(450.0)
    for schedule, micro, pieces in (("1f1b", 2, 2), ("tspipe", 4, 1)):
        start = list(calibration_partition(cal, 4, None, cal.batch / micro).student)
        balance, found = climb(cal, schedule, 4, micro, pieces, link)
        assert found >= search_partition(cal, schedule, 4, micro, link, start, pieces, rounds=0)[1]
        assert found == search_partition(cal, schedule, 4, micro, link, balance, pieces, rounds=0)[1]
        assert len(balance) == 4 and min(balance) >= 1 and sum(balance) == sum(start)


def test_main_prints_each_lever_and_the_edge(calibration_dir, capsys):
    path = calibration_dir / "byol_resnet18_bf16.json"
    assert main(["--calibration", str(path), "--stages", "2", "--max-pieces", "2"]) == 0
    out = capsys.readouterr().out
    assert "searched partition, pieces 1-2" in out and "family / best of gpipe, 1f1b" in out
    assert out.count("tspipe-zb ") == 2  # --max-pieces 2: no pieces lever, two levers
    assert main(["--calibration", str(path), "--max-pieces", "1"]) == 2
    assert main(["--calibration", str(calibration_dir / "missing.json")]) == 2
