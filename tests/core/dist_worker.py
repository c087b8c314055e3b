"""Runs engine test cases on every rank (started by core.launch) and saves merged weights.

Usage: python -m core.launch --nproc N tests.core.dist_worker SPEC.json OUT_DIR

``DIST_DEVICE`` (default ``cpu``) and ``DIST_TRANSPORT`` (default ``auto``) choose the device
and the transport the job starts with (``cuda`` with ``host``: every rank on one GPU).
"""

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import PipelineConfig
from core.launch import init_distributed
from core.runtime import gather_state, make_runner
from tests.core.toy import ToyTask, make_batches, sgd


def equal_replicas(runner) -> bool:
    """True on rank 0 when every replica of every stage holds bit-equal weights (dp runs)."""
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(runner.stage_state(), parts, dst=0)
    if dist.get_rank() != 0:
        return False
    stages = runner.config.stages
    return all(
        parts[r].keys() == parts[r % stages].keys()
        and all(
            parts[r][kind].keys() == parts[r % stages][kind].keys()
            and all(torch.equal(t, parts[r % stages][kind][k]) for k, t in parts[r][kind].items())
            for kind in parts[r]
        )
        for r in range(len(parts))
    )


def threads() -> int | None:
    """This process's OS threads (Linux), communication threads included."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    return int(
        next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("Threads:"))
    )


def settled_threads(baseline: int | None, wait_s: float = 2.0) -> int | None:
    """This process's threads once those that are ending have ended: above ``baseline`` (the
    first case's count), polled for up to ``wait_s`` until it falls back (a thread that a
    destroyed group joins can take a moment to leave ``/proc``); a thread still there after
    that was left behind."""
    count = threads()
    deadline = time.monotonic() + wait_s
    while baseline is not None and count is not None and count > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
        count = threads()
    return count


def main() -> None:
    spec, out = Path(sys.argv[1]), Path(sys.argv[2])
    transport = os.environ.get("DIST_TRANSPORT", "auto")
    rank = init_distributed(os.environ.get("DIST_DEVICE", "cpu"), transport=transport)
    torch.set_num_threads(1)
    baseline = None
    for case in json.loads(spec.read_text()):
        torch.set_default_dtype(getattr(torch, case.get("dtype", "float32")))
        task = ToyTask(case["teacher"], case.get("bn", True), case["steps"], fail_at=case.get("fail_at", -1))
        config = PipelineConfig(
            schedule=case["schedule"],
            stages=rank.world // case.get("dp", 1),
            dp=case.get("dp", 1),
            microbatches=case["microbatches"],
            backward_pieces=case.get("pieces"),
            max_grad_norm=case.get("max_grad_norm"),
            record_timeline=True,
            amp_bf16=case.get("amp", False),
            transport=case.get("transport", transport),
            compile=case.get("compile", "none"),
            compile_backend=case.get("compile_backend", "inductor"),
            teacher_lookahead=case.get("lookahead"),
        )
        runner = make_runner(task, config, rank.device, sgd)
        log = runner.run(make_batches(case["steps"]), case["steps"])
        state = gather_state(runner.stage_state())
        replicas_equal = equal_replicas(runner) if case.get("dp", 1) > 1 else None
        network = type(getattr(runner, "transport", None)).__name__
        runner.close()
        del runner
        gc.collect()  # as the bench's worker does between runs
        if rank.rank == 0:
            state["threads"] = settled_threads(baseline)
            baseline = state["threads"] if baseline is None else baseline
            state["transport"] = network
            state["replicas_equal"] = replicas_equal
            torch.save(state, out / f"{case['name']}.pt")
        if log.losses:
            torch.save(log.losses, out / f"{case['name']}.losses.pt")


if __name__ == "__main__":
    main()
