"""Runs engine test cases on every rank (started by core.launch) and saves merged weights.

Usage: python -m core.launch --nproc N tests.core.dist_worker SPEC.json OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch

from core.config import PipelineConfig
from core.launch import init_distributed
from core.runtime import gather_state, make_runner
from tests.core.toy import ToyTask, make_batches, sgd


def main() -> None:
    spec, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = init_distributed("cpu")
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
        )
        runner = make_runner(task, config, rank.device, sgd)
        log = runner.run(make_batches(case["steps"]), case["steps"])
        state = gather_state(runner.stage_state())
        runner.close()
        if rank.rank == 0:
            torch.save(state, out / f"{case['name']}.pt")
        if log.losses:
            torch.save(log.losses, out / f"{case['name']}.losses.pt")


if __name__ == "__main__":
    main()
