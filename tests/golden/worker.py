"""Runs the golden cases on every rank (started by ``core.launch``) and writes each case's
fingerprint: a hash of every student and teacher tensor after the run.

Usage: ``python -m core.launch --nproc N tests.golden.worker OUT.json``
(``python -m tests.golden.worker OUT.json`` for one process).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

from tests.golden.cases import cases
from tests.golden.fingerprint import state_print


def run_case(case: dict, rank) -> dict | None:
    from core.engine import make_runner
    from core.runtime import gather_state
    from methods.common.config import build_config

    train = importlib.import_module(f"methods.{case['method']}.train")
    method = train.METHOD
    overrides = {
        "schedule": case["schedule"],
        "stages": case["stages"],
        "microbatches": case["microbatches"],
        "steps": case["steps"],
        **case["extra"],
    }
    config = build_config(method.config_cls, method.presets["tiny"], [f"{k}={v}" for k, v in overrides.items()])
    setup = method.setup(config)
    runner = make_runner(setup.task, config.pipeline(), rank.device, setup.optimizer, setup.scheduler)
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
