"""The golden cases: every method under every schedule and runner, tiny fp32 runs of 3 steps.

A case is plain data so the same list drives the worker (which runs it) and the test (which
compares what it got with ``fingerprints.json``).
"""

from __future__ import annotations

STEPS = 3
METHODS = ("byol", "moco_v3", "soft_target", "distilbert")
# (schedule, processes, micro-batches)
RUNS = (
    ("sequential", 1, 2),
    ("mp", 2, 1),
    ("gpipe", 2, 2),
    ("1f1b", 2, 2),
    ("tspipe", 2, 2),
    ("ddp", 2, 1),
    ("torch-gpipe", 2, 2),
    ("torch-1f1b", 2, 2),
)
# What makes each method's tiny preset runnable anywhere with no trained teacher or data files.
EXTRA = {
    "byol": {},
    "moco_v3": {},
    "soft_target": {"dataset": "synthetic", "teacher_checkpoint": "random"},
    "distilbert": {"corpus": "synthetic"},
}


def cases(world: int) -> list[dict]:
    """The cases run on ``world`` processes."""
    out = []
    for method in METHODS:
        for schedule, procs, micro in RUNS:
            if procs != world:
                continue
            extra = dict(EXTRA[method])
            out.append(
                dict(
                    name=f"{method}/{schedule}",
                    method=method,
                    schedule=schedule,
                    stages=procs,
                    microbatches=micro,
                    steps=STEPS,
                    extra=extra,
                )
            )
    return out
