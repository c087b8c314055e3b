"""Calibration files: per-block costs of a teacher/student pair measured on a GPU, read into a
:class:`Calibration`, partitioned, turned into a cost model and simulated.

Field names (``experiments/calibration/h200/README.md``): ``teacher_fwd_ms``, ``student_fwd_ms``,
``student_fwdbwd_ms``, ``ema_ms`` at the full ``batch``; ``seq_step_ms`` one sequential step;
``teacher_blocks`` / ``student_blocks``: per-block ``fwd_ms``, ``bwd_ms``, ``out_shape`` at batch
``microbatch``; ``amp_bf16``. A ``*_mbsweep_*`` file adds per-block costs at several micro-batch
sizes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.partition import Partition, plan_partition
from core.schedules import Schedule, build_schedule
from core.simulate import WINDOW_BATCHES, CostModel, Link, SimResult, ddp_step, simulate, stage_cost_model


@dataclass(frozen=True)
class Calibration:
    """Per-block costs of one teacher/student pair, read from a calibration JSON file.

    Attributes:
        pair: the pair's name, e.g. ``"byol_resnet50"``.
        batch: mini-batch samples the file was measured for (images or sequences).
        microbatch: samples at which the per-block costs were measured.
        amp_bf16: whether bf16 autocast was on (2-byte activations) or not (4-byte).
        views: views per sample (2 for BYOL and MoCo-v3, whose costs are per view).
        teacher: ``"ema"`` or ``"frozen"``.
        teacher_fwd, student_fwd, student_bwd: ms per block at ``microbatch`` samples.
        teacher_out, student_out: elements per sample of each block's output.
        ema_ms: one EMA update of the whole teacher.
        sweep: for a micro-batch sweep file, ``{samples: (teacher_fwd, student_fwd, student_bwd)}``.
        source: file the costs came from.
    """

    pair: str
    batch: int
    microbatch: int
    amp_bf16: bool
    views: int
    teacher: str
    teacher_fwd: tuple[float, ...]
    student_fwd: tuple[float, ...]
    student_bwd: tuple[float, ...]
    teacher_out: tuple[int, ...]
    student_out: tuple[int, ...]
    ema_ms: float
    sweep: dict[int, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] | None
    source: str
    student_params: int = 0

    @property
    def method(self) -> str:
        """Project method name of the pair."""
        for prefix, method in (("byol", "byol"), ("mocov3", "moco_v3"), ("kd", "soft_target")):
            if self.pair.startswith(prefix):
                return method
        return "distilbert" if self.pair.startswith("distil") else self.pair

    def block_costs(self, samples: float) -> tuple[list[float], list[float], list[float]]:
        """Per-block (teacher forward, student forward, student backward) ms at ``samples``.

        Without a sweep, costs scale linearly from ``microbatch``. With a sweep they are
        interpolated linearly between measured sizes, and scaled linearly beyond its ends.
        """
        if not self.sweep:
            scale = samples / self.microbatch
            return (
                [c * scale for c in self.teacher_fwd],
                [c * scale for c in self.student_fwd],
                [c * scale for c in self.student_bwd],
            )
        sizes = sorted(self.sweep)
        if samples <= sizes[0]:
            lo = hi = sizes[0]
        elif samples >= sizes[-1]:
            lo = hi = sizes[-1]
        else:
            hi = next(s for s in sizes if s >= samples)
            lo = max(s for s in sizes if s <= samples)
        out = []
        for k in range(3):
            a, b = self.sweep[lo][k], self.sweep[hi][k]
            if lo == hi:
                out.append([x * samples / lo for x in a])
            else:
                w = (samples - lo) / (hi - lo)
                out.append([x + w * (y - x) for x, y in zip(a, b)])
        return out[0], out[1], out[2]

    def microbatch_penalty(self, samples: float) -> float | None:
        """Work per sample at ``samples`` over work per sample at the full batch (sweep only).

        Returns:
            None without a sweep (linear scaling has no penalty by construction).
        """
        if not self.sweep:
            return None

        def per_sample(n: float) -> float:
            return sum(sum(x) for x in self.block_costs(n)) / n

        return per_sample(samples) / per_sample(self.batch)


def _elements(shape: Sequence[int]) -> int:
    return int(math.prod(shape[1:]))


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; a ``*_mbsweep_*`` file is read with its base file.

    Returns:
        The :class:`Calibration`.

    Raises:
        FileNotFoundError: if the file (or a sweep's base file) is missing.
        ValueError: if the file lacks the fields the calibration README describes.
    """
    path = Path(path)
    sweep = None
    base_path = path
    if "_mbsweep_" in path.name:
        data = json.loads(path.read_text())
        sweep = {
            int(k): (tuple(v["teacher_fwd_ms"]), tuple(v["student_fwd_ms"]), tuple(v["student_bwd_ms"]))
            for k, v in data["sweep"].items()
        }
        base_path = path.with_name(path.name.replace("_mbsweep", ""))
        if not base_path.exists():
            raise FileNotFoundError(f"sweep file {path} needs its base file {base_path} beside it")
    data = json.loads(base_path.read_text())
    try:
        tb, sb = data["teacher_blocks"], data["student_blocks"]
        pair = data["pair"]
        ssl = pair.startswith(("byol", "mocov3"))
        cal = Calibration(
            pair=pair,
            batch=int(data["batch"]),
            microbatch=int(data["microbatch"]),
            amp_bf16=bool(data["amp_bf16"]),
            views=2 if ssl else 1,
            teacher="ema" if ssl else "frozen",
            teacher_fwd=tuple(tb["fwd_ms"]),
            student_fwd=tuple(sb["fwd_ms"]),
            student_bwd=tuple(sb["bwd_ms"]),
            teacher_out=tuple(_elements(s) for s in tb["out_shape"]),
            student_out=tuple(_elements(s) for s in sb["out_shape"]),
            ema_ms=float(data.get("ema_ms", 0.0)) if ssl else 0.0,
            sweep=sweep,
            source=path.name,
            student_params=int(float(data.get("student_params_M", 0.0)) * 1e6),
        )
    except KeyError as err:
        raise ValueError(
            f"{path}: missing calibration field {err}; see experiments/calibration/h200/README.md for the format"
        ) from None
    if sweep and any(len(v[0]) != len(cal.teacher_fwd) for v in sweep.values()):
        raise ValueError(f"{path}: sweep block counts differ from {base_path.name}")
    return cal


def calibration_partition(cal: Calibration, stages: int, balance: Sequence[int] | None = None) -> Partition:
    """Auto-balanced (or checked) partition of a calibration pair over ``stages``.

    Raises:
        ValueError: for more stages than blocks or a balance that does not fit.
    """
    t, f, b = cal.block_costs(cal.microbatch)
    return plan_partition(stages, [x + y for x, y in zip(f, b)], t, cal.teacher, balance=balance)


def calibration_costs(
    cal: Calibration, partition: Partition, microbatches: int, link: Link | None = None
) -> CostModel:
    """Per-stage unit costs of a calibration pair: ``batch / microbatches`` samples per unit; the
    EMA update (``ema_ms``) spread over the stages by teacher block count."""
    samples = cal.batch / microbatches
    t, f, b = cal.block_costs(samples)
    dtype_bytes = 2 if cal.amp_bf16 else 4
    ema = [cal.ema_ms / len(cal.teacher_fwd)] * len(cal.teacher_fwd)
    return stage_cost_model(
        teacher_fwd=t,
        student_fwd=f,
        student_bwd=b,
        teacher_bytes=[n * samples * dtype_bytes for n in cal.teacher_out],
        student_bytes=[n * samples * dtype_bytes for n in cal.student_out],
        student_opt=[0.0] * len(f),
        teacher_opt=ema,
        partition=partition,
        link=link or Link(),
    )


def simulate_calibration(
    cal: Calibration,
    schedule: str,
    stages: int,
    microbatches: int,
    link: Link | None = None,
    balance: Sequence[int] | None = None,
    backward_pieces: int | None = None,
) -> tuple[SimResult, Schedule, Partition]:
    """Simulate one calibration pair under a named schedule.

    Returns:
        (result, built schedule, partition used).
    """
    partition = calibration_partition(cal, stages, balance)
    costs = calibration_costs(cal, partition, microbatches, link)
    built = build_schedule(
        schedule, stages, microbatches, cal.teacher, WINDOW_BATCHES, backward_pieces, views=cal.views
    )
    return simulate(built, costs, cal.batch), built, partition


def simulate_ddp(
    cal: Calibration, stages: int, link: Link | None = None, grad_bytes: int = 4
) -> dict[str, float]:
    """Data parallelism over ``stages`` GPUs, modelled from the calibration (:func:`core.simulate.ddp_step`):
    every GPU runs the whole teacher and student on ``batch / stages`` samples (per-block costs at
    that size, so the micro-batch sweep's penalty applies), and the ring all-reduce of the
    student's gradients overlaps the backward pass completely (the favourable case for DDP).

    Returns:
        ``step_ms``, ``samples_per_s``, ``allreduce_ms``, ``efficiency`` (against the same
        bubble-free bound as the pipelines at M = N) and ``bound_samples_per_s``.

    Raises:
        ValueError: if the calibration lacks the student's parameter count.
    """
    if not cal.student_params:
        raise ValueError(f"{cal.source} has no student_params_M; cannot model the all-reduce")
    link = link or Link()
    t, f, b = cal.block_costs(cal.batch / stages)
    step, allreduce = ddp_step(
        forward_ms=cal.views * (sum(t) + sum(f)),
        backward_ms=cal.views * sum(b),
        other_ms=cal.ema_ms,
        grad_bytes=cal.student_params * grad_bytes,
        replicas=stages,
        link=link,
        overlap=1.0,
    )
    # the pipelines' bound at M = N: N x batch / all work of one mini-batch at that unit size
    work = cal.views * stages * (sum(t) + sum(f) + sum(b)) + cal.ema_ms
    bound = stages * cal.batch / work * 1e3
    samples = cal.batch / step * 1e3
    return {
        "step_ms": step,
        "samples_per_s": samples,
        "allreduce_ms": allreduce,
        "efficiency": samples / bound,
        "bound_samples_per_s": bound,
    }


def result_dict(
    cal: Calibration, built: Schedule, partition: Partition, result: SimResult, link: Link
) -> dict:
    """The JSON summary of one simulation (the CLI's ``--format json``)."""
    penalty = cal.microbatch_penalty(cal.batch / built.microbatches)
    return {
        "pair": cal.pair,
        "calibration": cal.source,
        "schedule": built.name,
        "stages": built.stages,
        "microbatches": built.microbatches,
        "views": built.views,
        "backward_pieces": built.backward_pieces,
        "global_batch": cal.batch,
        "link_gbps": link.gbps,
        "latency_us": link.latency_us,
        "balance": list(partition.student),
        "teacher_balance": list(partition.teacher),
        "step_ms": result.step_ms,
        "samples_per_s": result.samples_per_s,
        "efficiency": result.efficiency,
        "bubble_fraction": result.bubble_fraction,
        "bound_samples_per_s": result.bound_samples_per_s,
        "balance_cap": result.balance_cap,
        "microbatch_penalty": penalty,
        "simulated": True,
    }
