"""Discrete-event simulator: a lowered schedule and a cost model give a timeline and throughput.

Every action of a stage runs in list order; a compute action takes its cost, a send is issued
without blocking and arrives after ``latency + bytes / bandwidth`` (one message at a time per link
and direction), and a receive waits for its message (and, on a CPU host, the stage that waited
resumes slower: :meth:`core.link.Link.wake_penalty_ms`). The replay is :func:`core.validate.dry_run`
with durations, so the simulator and the validator can never disagree about what runs when.

Default link: 450 GB/s with 10 us latency (NVLink-class; ``--link-gbps 25`` for PCIe-class).
A calibration's EMA update (``ema_ms``, spread by teacher block count) is charged to each ``OPT``,
its loss (where measured) to ``LOSS``; :func:`core.ddp_model.ddp_step` models data parallelism.

Command line::

    python -m core.simulate --calibration FILE --stages N --microbatches M --schedule NAME \\
        [--link-gbps G] [--latency-us L] [--cost-model realistic|linear] [--format json|table]
        [--timeline OUT.jsonl]    # python -m analysis.timeline OUT.jsonl --out OUT.png draws it
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.action import Action, Op
from core.cost_model import CostModel
from core.link import DEFAULT_LATENCY_US, DEFAULT_LINK_GBPS, Link
from core.metrics import TimelineRecord, busy_and_span, steady_state
from core.schedules import Schedule, schedules
from core.validate import dry_run

WINDOW_BATCHES = 8  # simulated mini-batches (window_batches adds more); steady state over 2..6
_WARMUP_BATCH = 2


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


def simulate(
    schedule: Schedule, costs: CostModel, batch_samples: int, torch_p2p: bool = False, step_sync: bool = False
) -> SimResult:
    """Simulate ``schedule`` under ``costs``.

    Args:
        schedule: a schedule built for at least ``4 + T`` mini-batches, ``T`` the larger of 1
            and its ``fill_ahead`` (steady state is measured between the ends of batch 2 and of
            batch ``batches - 1 - T``: the last T steps lack teacher forwards that far ahead, and
            counting them would favour the schedule; fewer batches use the whole window).
        costs: per-stage costs; its stage count must match the schedule's.
        batch_samples: samples per mini-batch, for samples/s.
        torch_p2p: messages as ``torch.distributed.pipelining``'s schedules exchange them over
            gloo: each receive posted only when its stage reaches it (the message moves from
            then on), and a stage waiting for its sends to be delivered whenever its work
            changes kind (``core.validate.dry_run``'s ``on_demand`` and ``send_waits``).
        step_sync: every stage's ``OPT`` starts when the last one reaches it (global-norm
            clipping, ``dry_run``'s ``step_sync``).

    Returns:
        A :class:`SimResult`.

    Raises:
        ValueError: on a stage-count mismatch, or if the schedule deadlocks.
    """
    if costs.stages != schedule.stages:
        raise ValueError(f"cost model has {costs.stages} stages, schedule {schedule.stages}")
    units, pieces, link = schedule.units, schedule.backward_pieces, costs.link

    fed: set[int] = set()  # mini-batches whose inputs stage 0 has made
    waits = waiting_halves(schedule) if costs.waiting else set()

    def duration(a: Action) -> float:
        took = costs.duration(a, units, pieces, schedule.split_backward, a in waits)
        if a.stage == 0 and a.is_compute and a.batch not in fed:
            fed.add(a.batch)
            took += costs.input_ms
        return took

    def transfer(a: Action, sent: float, free: float) -> float:
        return max(sent, free) + link.transfer_ms(costs.message_bytes(a, pieces))

    records = dry_run(
        schedule.lowered,
        duration,
        transfer,
        schedule.stage_to_rank,
        link.wake_penalty_ms,
        on_demand=torch_p2p,
        send_waits=torch_p2p,
        step_sync=step_sync,
    )
    tail = max(1, schedule.fill_ahead)  # the last steps lack the teacher forwards far ahead
    if schedule.batches >= 4 + tail:
        step, bubble = steady_state(records, schedule.stages, _WARMUP_BATCH, schedule.batches - 1 - tail)
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


def waiting_halves(schedule: Schedule) -> set[Action]:
    """Split-backward halves that run while another piece's ``SW`` waits on their stage."""
    waits: set[Action] = set()
    for actions in schedule.compute if schedule.split_backward else ():
        held: dict[int, set[tuple]] = {}
        for a in (a for a in actions if a.op in (Op.SB, Op.SW)):
            key, mine = (a.batch, a.microbatch, a.part), held.setdefault(a.stage, set())
            if mine - {key}:
                waits.add(a)
            (mine.add if a.op == Op.SB else mine.discard)(key)
    return waits


def main(argv: Sequence[str] | None = None) -> int:
    from core.calibration import load_calibration
    from core.paper_scale import result_dict, simulate_calibration

    pipelines = [s.name for s in schedules("pipeline")]  # plugins (TSPIPE_PLUGINS) loaded first
    parser = argparse.ArgumentParser(
        prog="python -m core.simulate", description="Simulate a schedule on a calibration file."
    )
    parser.add_argument("--calibration", required=True, help="calibration JSON (a *_mbsweep_* file too)")
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--microbatches", type=int, required=True, help="micro-batches per mini-batch")
    parser.add_argument("--schedule", required=True, help=f"one of: {', '.join(pipelines)}")
    parser.add_argument("--link-gbps", type=float, default=DEFAULT_LINK_GBPS, help="GB/s (bytes)")
    parser.add_argument("--latency-us", type=float, default=DEFAULT_LATENCY_US)
    parser.add_argument("--backward-pieces", type=int, default=None)
    parser.add_argument("--lookahead", type=int, default=None, help="tspipe family: teacher lookahead L")
    parser.add_argument("--balance", default=None, help="comma-separated student blocks per stage")
    parser.add_argument(
        "--cost-model",
        choices=("realistic", "linear"),
        default="realistic",
        help="realistic: the micro-batch sweep scaled to the measured networks (default); linear: the schedule alone",
    )
    parser.add_argument("--format", choices=("json", "table"), default="table")
    parser.add_argument(
        "--timeline",
        default=None,
        help="write the simulated timeline here (JSON lines; analysis.timeline draws it)",
    )
    args = parser.parse_args(argv)
    try:
        if args.schedule not in pipelines:
            raise ValueError(
                f"{args.schedule!r} is not a simulated pipeline schedule; choose one of: {', '.join(pipelines)}"
            )
        cal = load_calibration(args.calibration, args.cost_model)
        link = Link(args.link_gbps, args.latency_us)
        balance = [int(x) for x in args.balance.split(",")] if args.balance else None
        result, built, partition = simulate_calibration(
            cal,
            args.schedule,
            args.stages,
            args.microbatches,
            link,
            balance,
            args.backward_pieces,
            lookahead=args.lookahead,
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
    if args.timeline:
        with Path(args.timeline).open("w") as fh:
            for record in result.records:
                fh.write(json.dumps(record.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
