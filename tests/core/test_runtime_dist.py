"""The engine on several processes (gloo, CPU): every schedule and runner equals the plain
single-process reference; a failing rank stops the job with its traceback and action grid."""

from __future__ import annotations

import json
import time

import pytest
import torch

from core.schedules import get_schedule
from tests.conftest import launch_module
from tests.core.toy import ToyTask, make_batches, reference

STEPS = 3

# (schedule, micro-batches, backward pieces; None: the schedule's default)
PIPELINE = [
    ("mp", 1, None),
    ("gpipe", 2, None),
    ("gpipe", 2, 2),
    ("gpipe", 3, None),
    ("1f1b", 3, None),
    ("tspipe", 2, None),
    ("tspipe", 3, 1),
    ("zb", 3, None),
    ("zb", 2, 2),
    ("tspipe-zb", 2, None),
    ("tspipe-zb", 3, 1),
    ("tspipe-zbh1", 2, None),
    ("tspipe-zbh1", 3, 1),
]


def cases(world: int) -> list[dict]:
    out = []
    for dtype in ("float32", "float64"):
        for teacher in ("ema", "frozen"):
            for schedule, micro, pieces in PIPELINE:
                out.append(
                    dict(schedule=schedule, teacher=teacher, microbatches=micro, pieces=pieces, dtype=dtype)
                )
            out.append(dict(schedule="ddp", teacher=teacher, microbatches=1, dtype=dtype))
            # PyTorch's 1F1B wants at least as many micro-batches as stages
            out.append(dict(schedule="torch-gpipe", teacher=teacher, microbatches=2, dtype=dtype))
            out.append(dict(schedule="torch-1f1b", teacher=teacher, microbatches=world, dtype=dtype))
        # global gradient clipping, small enough to bite at every step
        out.append(dict(schedule="tspipe", teacher="ema", microbatches=2, max_grad_norm=0.05, dtype=dtype))
        out.append(dict(schedule="tspipe-zb", teacher="ema", microbatches=2, max_grad_norm=0.05, dtype=dtype))
        out.append(
            dict(schedule="tspipe-zbh1", teacher="ema", microbatches=2, max_grad_norm=0.05, dtype=dtype)
        )
        out.append(dict(schedule="gpipe", teacher="frozen", microbatches=2, max_grad_norm=0.05, dtype=dtype))
    out.append(dict(schedule="tspipe", teacher="ema", microbatches=2, bn=False, dtype="float32"))
    # teacher lookahead L (staleness L): exact at 0, two versions stale at 2, over enough steps
    # that a middle segment runs between the first and the last L
    for schedule in ("tspipe", "tspipe-zb", "tspipe-zbh1"):
        for lookahead in (0, 2):
            out.append(
                dict(
                    schedule=schedule,
                    teacher="ema",
                    microbatches=2,
                    lookahead=lookahead,
                    steps=5,
                    dtype="float64",
                )
            )
    out.append(
        dict(
            schedule="tspipe",
            teacher="ema",
            microbatches=2,
            lookahead=2,
            steps=5,
            max_grad_norm=0.05,
            dtype="float32",
        )
    )
    # a frozen teacher is staggered (stage s runs N - s mini-batches ahead): enough steps that a
    # middle segment runs between the first and the last N
    for schedule in ("tspipe", "tspipe-zb", "tspipe-zbh1"):
        out.append(
            dict(schedule=schedule, teacher="frozen", microbatches=2, steps=world + 3, dtype="float64")
        )
    # data-parallel replicas of the pipeline: dp 2 x pp world/2 (dp 2 x pp 1 on two processes)
    for dtype in ("float32", "float64"):
        for teacher in ("ema", "frozen"):
            for schedule, micro in (
                ("gpipe", 2),
                ("1f1b", 3),
                ("tspipe", 2),
                ("zb", 3),
                ("tspipe-zb", 2),
                ("tspipe-zbh1", 3),
            ):
                out.append(dict(schedule=schedule, teacher=teacher, microbatches=micro, dp=2, dtype=dtype))
    out.append(
        dict(schedule="tspipe", teacher="ema", microbatches=2, dp=2, max_grad_norm=0.05, dtype="float32")
    )
    out.append(
        dict(schedule="1f1b", teacher="frozen", microbatches=3, dp=2, max_grad_norm=0.05, dtype="float32")
    )
    if world == 4:
        out.append(dict(schedule="mp", teacher="ema", microbatches=1, dp=2, dtype="float64"))
    amp = [
        dict(schedule=s, teacher="frozen", microbatches=2, dtype="float32", amp=True)
        for s in ("gpipe", "tspipe")
    ]
    for case in out + amp:
        case.setdefault("steps", STEPS)
        case["name"] = (
            "_".join(str(case[k]) for k in ("schedule", "teacher", "microbatches", "dtype") if k in case)
            + f"_p{case.get('pieces')}_c{case.get('max_grad_norm')}_bn{case.get('bn', True)}"
            + ("_amp" if case.get("amp") else "")
            + (f"_L{case['lookahead']}_s{case['steps']}" if "lookahead" in case else "")
            + (f"_s{case['steps']}" if "lookahead" not in case and case["steps"] != STEPS else "")
            + (f"_dp{case['dp']}" if "dp" in case else "")
        )
    return out + amp


def run_world(world: int, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp(f"world{world}")
    spec = folder / "spec.json"
    spec.write_text(json.dumps(cases(world)))
    proc = launch_module("tests.core.dist_worker", world, str(spec), str(folder), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {}
    for c in cases(world):
        out[c["name"]] = torch.load(folder / f"{c['name']}.pt")
        out[c["name"]]["losses"] = [x["loss"] for x in torch.load(folder / f"{c['name']}.losses.pt")]
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return run_world(2, tmp_path_factory)


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return run_world(4, tmp_path_factory)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in sorted(state) if state[k].is_floating_point()])


def relative_difference(got: dict, want: dict) -> float:
    assert sorted(got) == sorted(want)
    for k in want:  # integer buffers (BatchNorm step counts) match exactly
        if not want[k].is_floating_point():
            assert torch.equal(got[k], want[k]), k
    a, b = flat(got), flat(want)
    return float((a - b).norm() / b.norm())


def expected(case: dict) -> dict:
    dtype = getattr(torch, case["dtype"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        task = ToyTask(case["teacher"], case.get("bn", True), case["steps"])
        spec = get_schedule(case["schedule"])
        pieces = spec.pieces(case.get("pieces"))
        micro = case["microbatches"] * (case["world"] if case["schedule"] == "ddp" else case.get("dp", 1))
        stale = spec.staleness(case["teacher"], case.get("lookahead"))
        return reference(task, make_batches(case["steps"]), micro, pieces, stale, case.get("max_grad_norm"))
    finally:
        torch.set_default_dtype(previous)


def check(results: dict, case: dict) -> None:
    got = results[case["name"]]
    want = expected(case)
    tolerance = 1e-6 if case["dtype"] == "float32" else 1e-12
    if case.get("amp"):  # bf16 autocast: close to the fp32 reference, not equal
        tolerance = 5e-2
    assert relative_difference(got["student"], want["student"]) <= tolerance
    assert relative_difference(got["teacher"], want["teacher"]) <= tolerance
    if case.get("dp", 1) > 1:  # every replica ends with the same student and teacher, bit for bit
        assert got["replicas_equal"] is True


@pytest.mark.dist
@pytest.mark.parametrize("case", cases(2), ids=lambda c: c["name"])
def test_two_processes_equal_the_reference(world2, case):
    check(world2, {**case, "world": 2})


@pytest.mark.dist
@pytest.mark.parametrize("case", cases(4), ids=lambda c: c["name"])
def test_four_processes_equal_the_reference(world4, case):
    check(world4, {**case, "world": 4})


def find(schedule, teacher, micro, pieces=None, dtype="float32"):
    return next(
        c["name"]
        for c in cases(2)
        if (
            c["schedule"],
            c["teacher"],
            c["microbatches"],
            c.get("pieces"),
            c["dtype"],
            c.get("max_grad_norm"),
        )
        == (schedule, teacher, micro, pieces, dtype, None)
    )


@pytest.mark.dist
def test_the_stale_teacher_is_really_stale(world2):
    # tspipe's EMA run differs from synchronous training far beyond rounding: the staleness is real
    got = world2[find("tspipe", "ema", 2)]
    sync = reference(ToyTask("ema", True, STEPS), make_batches(STEPS), 2, 2, 0)
    assert relative_difference(got["student"], sync["student"]) > 1e-4


@pytest.mark.dist
def test_frozen_teacher_tspipe_equals_gpipe_step_for_step(world2, tmp_path_factory):
    for (ts_micro, ts_pieces), (gp_micro, gp_pieces) in (((2, None), (2, 2)), ((3, 1), (3, None))):
        ts, gp = find("tspipe", "frozen", ts_micro, ts_pieces), find("gpipe", "frozen", gp_micro, gp_pieces)
        assert relative_difference(world2[ts]["student"], world2[gp]["student"]) <= 1e-6
        ts_loss, gp_loss = world2[ts]["losses"], world2[gp]["losses"]
        assert len(ts_loss) == STEPS
        assert ts_loss == pytest.approx(gp_loss, rel=1e-6)


@pytest.mark.dist
def test_a_closed_runner_leaves_no_threads_behind(world2):
    # one process runs every case in turn, as the bench's worker runs every run: each runner's
    # communication threads (the torch peer's process groups included) end with its close
    counts = [world2[c["name"]]["threads"] for c in cases(2)]
    if counts[0] is None:
        pytest.skip("no /proc/self/status")
    assert any(c["schedule"].startswith("torch-") for c in cases(2))
    assert {c["name"]: n for c, n in zip(cases(2), counts) if n != counts[0]} == {}


@pytest.mark.dist
def test_a_failing_rank_stops_the_job_and_names_itself(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps([dict(name="boom", schedule="tspipe", teacher="ema", microbatches=2, steps=4, fail_at=1)])
    )
    start = time.monotonic()
    proc = launch_module("tests.core.dist_worker", 3, str(spec), str(tmp_path), timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60
    assert "rank 2 of 3 exited with code" in proc.stderr
    assert "injected failure at step 1" in proc.stderr
    assert ">>2LOSS@1<<" in proc.stderr  # the action grid with the failing action marked
