"""How fast a shared CPU host runs at each run of a bench, and what that does to a round's
prediction.

A shared host changes speed from one run to the next (other tenants on the same cores). A
round predicts every run from the one-process runs timed at its start (:func:`experiments.bench.calibration_fits`),
so when the machine drifts between those runs and a later run of the round, the drift shows as a
simulator error. To tell the two apart, every rank of a multi-process group times the same fixed
piece of work at once before and after every run (:func:`probe_ms`: the teacher's forward on one
unit, the piece the wake and traffic probes time), and the run keeps the mean over the ranks
(``speed_ms``). One probe is about as noisy as one step, so the machine's speed at a run is the
median of the probes of the run and of its ``WINDOW`` neighbours on each side in the round's
order (:func:`run_speeds`): it follows the drift over a few runs, not the noise of one.

A round's prediction of a run was made at its calibration run's speed; scaled by (calibration
run's probe / this run's probe) it is the prediction at the speed the run met
(:func:`speed_factors`). Rows keep both: the prediction as made, and at speed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

PROBE_REPEATS = 3  # timed calls of the piece per probe (after one untimed)
WINDOW = 2  # neighbouring runs on each side whose probes a run's speed is the median of


def probe_ms(piece: Callable[[], object], repeats: int = PROBE_REPEATS) -> float:
    """Milliseconds one call of ``piece`` takes now: the median of ``repeats`` timed calls after
    one untimed, averaged over the ranks of the job when there are several (every rank must call
    this at once, after a barrier, so that every core is busy as in the runs)."""
    if repeats < 1:
        raise ValueError(f"a probe needs at least one timed call, got repeats={repeats}")
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    piece()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        piece()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors only
        total = torch.tensor([ms], dtype=torch.float64, device=on)
        dist.all_reduce(total)
        ms = float(total.item()) / dist.get_world_size()
    return ms


def run_speeds(
    probes: Sequence[Sequence[Sequence[float] | None]], window: int = WINDOW
) -> list[list[float | None]]:
    """The machine's speed at each run of a group, per round: ``probes[i][k]`` are run ``i``'s
    probes (ms) in round ``k`` (None or empty: none), in the order the group ran; the result's
    ``[i][k]`` is the median of every probe of runs ``i - window`` to ``i + window`` in round
    ``k`` (None where none of them has one)."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    rounds = max((len(p) for p in probes), default=0)
    out: list[list[float | None]] = [[] for _ in probes]
    for k in range(rounds):
        for i in range(len(probes)):
            near = [
                ms
                for j in range(max(0, i - window), min(len(probes), i + window + 1))
                if k < len(probes[j])
                for ms in (probes[j][k] or ())
            ]
            out[i].append(statistics.median(near) if near else None)
    return out


def speed_factors(
    calibration: Sequence[float | None] | None, run: Sequence[float | None] | None
) -> list[float] | None:
    """Per round, what a prediction made at the calibration run's speed is multiplied by to be
    the prediction at the run's speed: calibration probe / run probe (a slower machine: longer
    probes, fewer samples/s). None where a round lacks either probe."""
    if not calibration or not run or len(calibration) != len(run):
        return None
    if any(c is None or r is None or r <= 0 for c, r in zip(calibration, run)):
        return None
    return [c / r for c, r in zip(calibration, run)]
