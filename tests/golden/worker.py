"""Runs the golden cases on every rank (started by ``core.launch``) and writes each case's
fingerprint: a hash of every student and teacher tensor after the run.

Usage: ``python -m core.launch --nproc N tests.golden.worker OUT.json``
(``python -m tests.golden.worker OUT.json`` for one process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.golden.cases import cases
from tests.golden.fingerprint import state_print


def run_case(case: dict, rank) -> dict | None:
    from core.overrides import apply_overrides
    from core.runtime import gather_state, make_runner
    from methods.registry import get_method

    spec = get_method(case["method"])
    overrides = {
        "pipeline.schedule": case["schedule"],
        "pipeline.stages": case["stages"],
        "pipeline.microbatches": case["microbatches"],
        "run.steps": case["steps"],
        **{f"method.{k}": v for k, v in case["extra"].items()},
    }
    config = apply_overrides(spec.preset("tiny"), [f"{k}={v}" for k, v in overrides.items()])
    setup = spec.setup(config)
    runner = make_runner(setup.task, config.pipeline, rank.device, setup.optimizer, setup.scheduler)
    runner.run(setup.batches(0, case["steps"]), case["steps"])
    state = gather_state(runner.stage_state())
    runner.close()
    return state_print(state) if rank.rank == 0 else None


def main() -> None:
    from core.launch import init_distributed

    out = Path(sys.argv[1])
    rank = init_distributed("cpu")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    results = {}
    for case in cases(rank.world):
        results[case["name"]] = run_case(case, rank)
    if rank.rank == 0:
        out.write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
