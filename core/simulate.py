"""Discrete-event simulator: a lowered schedule and a cost model give a timeline and throughput.

Every action of a stage runs in list order; a compute action takes its cost, a send is issued
without blocking and arrives after ``latency + bytes / bandwidth`` (one message at a time per link
and direction), and a receive waits for its message. The replay is :func:`core.validate.dry_run`
with durations, so the simulator and the validator can never disagree about what runs when.

Default link: 450 GB/s with 10 us latency (NVLink-class; ``--link-gbps 25`` for PCIe-class).
Optimizer-step and loss times are not in the calibration files; the simulator charges the EMA
update (``ema_ms``, spread over stages by teacher block count) to each ``OPT`` and nothing to
``LOSS``.

Command line::

    python -m core.simulate --calibration FILE --stages N --microbatches M --schedule NAME \\
        [--link-gbps G] [--latency-us L] [--format json|table] [--gantt OUT.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.action import Action, Op
from core.metrics import TimelineRecord, busy_and_span, steady_state
from core.partition import Partition, plan_partition, stage_costs, stage_slices
from core.schedule import Schedule, build_schedule
from core.validate import dry_run

DEFAULT_LINK_GBPS = 450.0
DEFAULT_LATENCY_US = 10.0
WINDOW_BATCHES = 8  # simulated mini-batches; the steady state is measured over batches 2..6
_WARMUP_BATCH = 2


@dataclass(frozen=True)
class Link:
    """A point-to-point link between neighbouring stages.

    Attributes:
        gbps: bandwidth in gigabytes (not bits) per second.
        latency_us: fixed cost of one message in microseconds.
    """

    gbps: float = DEFAULT_LINK_GBPS
    latency_us: float = DEFAULT_LATENCY_US

    def __post_init__(self) -> None:
        if self.gbps <= 0 or self.latency_us < 0:
            raise ValueError(f"link needs gbps > 0 and latency_us >= 0, got {self}")

    def transfer_ms(self, nbytes: float) -> float:
        """Milliseconds to move ``nbytes`` over the link, latency included."""
        return self.latency_us / 1e3 + nbytes / (self.gbps * 1e9) * 1e3


@dataclass(frozen=True)
class CostModel:
    """Per-stage costs of one unit (one view of one micro-batch), in milliseconds.

    Attributes:
        teacher_fwd: teacher forward per unit, one entry per stage.
        student_fwd: student forward per unit.
        student_bwd: student backward per unit (a split backward's piece costs a share of it).
        teacher_bytes: bytes of one teacher activation message leaving each stage.
        student_bytes: bytes of one student activation (and gradient) message at each boundary.
        opt_ms: optimizer step plus teacher update per stage, once per mini-batch.
        loss_ms: the loss of the whole mini-batch on the last stage.
        link: the link between neighbouring stages.
    """

    teacher_fwd: tuple[float, ...]
    student_fwd: tuple[float, ...]
    student_bwd: tuple[float, ...]
    teacher_bytes: tuple[float, ...]
    student_bytes: tuple[float, ...]
    opt_ms: tuple[float, ...]
    loss_ms: float = 0.0
    link: Link = field(default_factory=Link)

    def __post_init__(self) -> None:
        n = len(self.teacher_fwd)
        for name in ("student_fwd", "student_bwd", "teacher_bytes", "student_bytes", "opt_ms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"cost model: {name} has {len(getattr(self, name))} stages, expected {n}")

    @property
    def stages(self) -> int:
        return len(self.teacher_fwd)

    def stage_work(self, units: int) -> list[float]:
        """Compute milliseconds each stage spends per mini-batch of ``units`` units."""
        work = [
            units * (t + f + b) + o
            for t, f, b, o in zip(self.teacher_fwd, self.student_fwd, self.student_bwd, self.opt_ms)
        ]
        work[-1] += self.loss_ms
        return work

    def duration(self, action: Action, units: int, pieces: int) -> float:
        s = action.stage
        if action.op == Op.TF:
            return self.teacher_fwd[s]
        if action.op == Op.SF:
            return self.student_fwd[s]
        if action.op == Op.SB:
            return self.student_bwd[s] / pieces
        if action.op == Op.LOSS:
            return self.loss_ms if action.microbatch is None else self.loss_ms / units
        if action.op == Op.OPT:
            return self.opt_ms[s]
        return 0.0

    def message_bytes(self, action: Action, pieces: int) -> float:
        if action.op == Op.SEND_TF:
            return self.teacher_bytes[action.stage]
        if action.op == Op.SEND_SF:
            return self.student_bytes[action.stage]
        # a gradient message from stage s is the size of stage s - 1's output, per piece
        return self.student_bytes[action.stage - 1] / (pieces if action.part is not None else 1)


@dataclass(frozen=True)
class SimResult:
    """What a simulation returns.

    Attributes:
        step_ms: steady-state time of one mini-batch.
        samples_per_s: mini-batch samples per second in the steady state.
        bubble_fraction: idle share of all stages in the steady state.
        bound_samples_per_s: bubble-free bound, N x batch / total work of a mini-batch.
        efficiency: samples_per_s / bound_samples_per_s.
        balance_cap: (total work / N) / busiest stage's work: the best efficiency the partition
            allows.
        records: every action's simulated start and end.
    """

    step_ms: float
    samples_per_s: float
    bubble_fraction: float
    bound_samples_per_s: float
    efficiency: float
    balance_cap: float
    records: list[TimelineRecord]


def simulate(schedule: Schedule, costs: CostModel, batch_samples: int) -> SimResult:
    """Simulate ``schedule`` under ``costs``.

    Args:
        schedule: a schedule built for at least 5 mini-batches (steady state is measured between
            the ends of batch 2 and of batch ``batches - 2``; fewer batches use the whole window).
        costs: per-stage costs; its stage count must match the schedule's.
        batch_samples: samples per mini-batch, for samples/s.

    Returns:
        A :class:`SimResult`.

    Raises:
        ValueError: on a stage-count mismatch, or if the schedule deadlocks.
    """
    if costs.stages != schedule.stages:
        raise ValueError(f"cost model has {costs.stages} stages, schedule {schedule.stages}")
    units, pieces, link = schedule.units, schedule.backward_pieces, costs.link

    def duration(a: Action) -> float:
        return costs.duration(a, units, pieces)

    def transfer(a: Action, sent: float, free: float) -> float:
        return max(sent, free) + link.transfer_ms(costs.message_bytes(a, pieces))

    records = dry_run(schedule.lowered, duration, transfer)
    if schedule.batches >= 5:
        step, bubble = steady_state(records, schedule.stages, _WARMUP_BATCH, schedule.batches - 2)
    elif schedule.batches >= 2:
        step, bubble = steady_state(records, schedule.stages, 0, schedule.batches - 1)
    else:  # one mini-batch: from the first start to the last end
        start, end = min(r.start_ms for r in records), max(r.end_ms for r in records)
        busy, step = busy_and_span(records, schedule.stages, start, end)
        bubble = 1.0 - sum(busy) / (schedule.stages * step) if step > 0 else 0.0
    work = costs.stage_work(units)
    bound = schedule.stages * batch_samples / sum(work) * 1e3
    samples = batch_samples / step * 1e3
    return SimResult(
        step_ms=step,
        samples_per_s=samples,
        bubble_fraction=bubble,
        bound_samples_per_s=bound,
        efficiency=samples / bound,
        balance_cap=(sum(work) / len(work)) / max(work),
        records=records,
    )


def unit_costs(stages: int, pieces_loss_opt: float = 0.5) -> CostModel:
    """Teacher forward = student forward = 1, backward = 2, loss and step 0.5, instant links:
    the cost model of the docstring timelines and the pinned simulator tests."""
    ones = tuple(1.0 for _ in range(stages))
    return CostModel(
        teacher_fwd=ones,
        student_fwd=ones,
        student_bwd=tuple(2.0 for _ in range(stages)),
        teacher_bytes=tuple(0.0 for _ in range(stages)),
        student_bytes=tuple(0.0 for _ in range(stages)),
        opt_ms=tuple(pieces_loss_opt for _ in range(stages)),
        loss_ms=pieces_loss_opt,
        link=Link(gbps=1.0, latency_us=0.0),
    )


def text_timeline(records: Sequence[TimelineRecord], stages: int, per_char: float = 0.5) -> str:
    """Render compute records as text, one row per stage, one character per ``per_char`` ms.

    Letters: ``T`` teacher forward, ``F`` student forward, ``B`` backward, ``L`` loss, ``O`` step,
    upper case for even mini-batches and lower case for odd ones; a forward or a whole backward
    shows its micro-batch after the letter where it has room; ``.`` is idle.
    """
    letters = {"TF": "T", "SF": "F", "SB": "B", "LOSS": "L", "OPT": "O"}
    end = max(r.end_ms for r in records)
    rows = [["."] * round(end / per_char) for _ in range(stages)]
    for r in records:
        if r.op not in letters:
            continue
        letter = letters[r.op] if r.batch % 2 == 0 else letters[r.op].lower()
        first, last = round(r.start_ms / per_char), round(r.end_ms / per_char)
        label = letter + (str(r.microbatch % 10) if r.microbatch is not None and r.part is None else "")
        for k in range(first, last):
            rows[r.stage][k] = label[(k - first) % len(label)] if last - first >= len(label) else letter
    return "\n".join(f"stage {s}: " + "".join(row) for s, row in enumerate(rows))


# --------------------------------------------------------------------------------------------
# Calibration files (../shared/calibration/h200/*.json)


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
        ValueError: if the file lacks the fields DESIGN.md describes.
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
        raise ValueError(f"{path}: missing calibration field {err}; see DESIGN.md for the format") from None
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
    """Per-stage unit costs of a calibration pair: ``batch / microbatches`` samples per unit."""
    samples = cal.batch / microbatches
    t, f, b = cal.block_costs(samples)
    dtype_bytes = 2 if cal.amp_bf16 else 4
    teacher_last = [r[-1] for r in stage_slices(partition.teacher)]
    student_last = [r[-1] for r in stage_slices(partition.student)]
    ema = [cal.ema_ms * n / len(cal.teacher_fwd) for n in partition.teacher]
    return CostModel(
        teacher_fwd=tuple(stage_costs(t, partition.teacher)),
        student_fwd=tuple(stage_costs(f, partition.student)),
        student_bwd=tuple(stage_costs(b, partition.student)),
        teacher_bytes=tuple(cal.teacher_out[i] * samples * dtype_bytes for i in teacher_last),
        student_bytes=tuple(cal.student_out[i] * samples * dtype_bytes for i in student_last),
        opt_ms=tuple(ema),
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
    """Data parallelism over ``stages`` GPUs, modelled from the calibration: every GPU runs the
    whole teacher and student on ``batch / stages`` samples (per-block costs at that size, so the
    micro-batch sweep's penalty applies), and the ring all-reduce of the student's gradients
    (``2 (N - 1) / N x parameters x grad_bytes`` over the link, plus ``2 (N - 1)`` latencies)
    overlaps the backward pass completely (the favourable case for DDP).

    Returns:
        ``step_ms``, ``samples_per_s``, ``allreduce_ms``, ``efficiency`` (against the same
        bubble-free bound as the pipelines at M = N) and ``bound_samples_per_s``.

    Raises:
        ValueError: if the calibration lacks the student's parameter count.
    """
    if not cal.student_params:
        raise ValueError(f"{cal.source} has no student_params_M; cannot model the all-reduce")
    link = link or Link()
    share = cal.batch / stages
    t, f, b = cal.block_costs(share)
    compute_fb = cal.views * (sum(t) + sum(f))
    backward = cal.views * sum(b)
    ring = 2 * (stages - 1) / stages
    allreduce = (
        ring * cal.student_params * grad_bytes / (link.gbps * 1e9) * 1e3
        + 2 * (stages - 1) * link.latency_us / 1e3
    )
    step = compute_fb + max(backward, allreduce) + cal.ema_ms
    samples = cal.batch / step * 1e3
    # the pipelines' bound at M = N: N x batch / all work of one mini-batch at that unit size
    tu, fu, bu = cal.block_costs(cal.batch / stages)
    work = cal.views * stages * (sum(tu) + sum(fu) + sum(bu)) + cal.ema_ms
    bound = stages * cal.batch / work * 1e3
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.simulate", description="Simulate a schedule on a calibration file."
    )
    parser.add_argument("--calibration", required=True, help="calibration JSON (a *_mbsweep_* file too)")
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--microbatches", type=int, required=True, help="micro-batches per mini-batch")
    parser.add_argument("--schedule", required=True)
    parser.add_argument("--link-gbps", type=float, default=DEFAULT_LINK_GBPS, help="GB/s (bytes)")
    parser.add_argument("--latency-us", type=float, default=DEFAULT_LATENCY_US)
    parser.add_argument("--backward-pieces", type=int, default=None)
    parser.add_argument("--balance", default=None, help="comma-separated student blocks per stage")
    parser.add_argument("--format", choices=("json", "table"), default="table")
    parser.add_argument("--gantt", default=None, help="write a Gantt chart PNG here")
    args = parser.parse_args(argv)
    try:
        cal = load_calibration(args.calibration)
        link = Link(args.link_gbps, args.latency_us)
        balance = [int(x) for x in args.balance.split(",")] if args.balance else None
        result, built, partition = simulate_calibration(
            cal, args.schedule, args.stages, args.microbatches, link, balance, args.backward_pieces
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = result_dict(cal, built, partition, result, link)
    if args.format == "json":
        print(json.dumps(summary, indent=1))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    if args.gantt:
        from analysis.timeline import plot_timelines  # plotting lives in analysis/

        title = f"{cal.pair} {built.name} N={built.stages} M={built.microbatches} (simulated)"
        plot_timelines([(title, [r.to_dict() for r in result.records])], Path(args.gantt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
