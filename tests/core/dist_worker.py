"""Runs engine test cases on every rank (started by core.launch) and saves merged weights.

Usage: python -m core.launch --nproc N tests.core.dist_worker SPEC.json OUT_DIR

``DIST_DEVICE`` (default ``cpu``) and ``DIST_TRANSPORT`` (default ``auto``) choose the device
and the transport the job starts with (``cuda`` with ``host``: every rank on one GPU).
"""

import json
import os
import sys
from pathlib import Path

import torch

from core.config import PipelineConfig
from core.launch import init_distributed
from core.runtime import gather_state, make_runner
from tests.core.toy import ToyTask, make_batches, sgd


def main() -> None:
    spec, out = Path(sys.argv[1]), Path(sys.argv[2])
    transport = os.environ.get("DIST_TRANSPORT", "auto")
    rank = init_distributed(os.environ.get("DIST_DEVICE", "cpu"), transport=transport)
    torch.set_num_threads(1)
    for case in json.loads(spec.read_text()):
        torch.set_default_dtype(getattr(torch, case.get("dtype", "float32")))
        task = ToyTask(case["teacher"], case.get("bn", True), case["steps"], fail_at=case.get("fail_at", -1))
        config = PipelineConfig(
            schedule=case["schedule"],
            stages=rank.world,
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
        network = type(getattr(runner, "transport", None)).__name__
        runner.close()
        if rank.rank == 0:
            state["transport"] = network
            torch.save(state, out / f"{case['name']}.pt")
        if log.losses:
            torch.save(log.losses, out / f"{case['name']}.losses.pt")


if __name__ == "__main__":
    main()
