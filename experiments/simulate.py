"""Paper-scale throughput sweep, simulated from the H200 calibration (rows + timelines)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.calibration import Calibration, load_calibration, result_dict, simulate_calibration, simulate_ddp
from core.metrics import make_row, write_rows
from core.schedules import get_schedule, schedules
from core.simulate import Link

# every pipeline schedule that runs on several stages (the registry's), in table order, and the
# data-parallel runner, which is modelled rather than simulated action by action
SCHEDULES = tuple(s.name for s in schedules("pipeline") if s.stages is None)
DDP = next(s.name for s in schedules("ddp"))
STAGES = (2, 4, 8, 16)
LINKS = {"nvlink": Link(450.0), "pcie": Link(25.0)}
# Files swept: one per model pair and granularity (fp32 and whole-block ViT/BERT files add little).
FILES = (
    "byol_resnet18_bf16.json",
    "byol_resnet50_bf16.json",
    "byol_resnet50_mbsweep_bf16.json",
    "mocov3_vit_base_halfblocks_bf16.json",
    "mocov3_vit_base_halfblocks_mbsweep_bf16.json",
    "mocov3_vit_large_halfblocks_bf16.json",
    "kd_resnet152_to_resnet50_bf16.json",
    "kd_resnet152_to_resnet50_mbsweep_bf16.json",
    "distil_bertlarge_to_6l_halfblocks_bf16.json",
    "distil_bertlarge_to_6l_halfblocks_mbsweep_bf16.json",
)
# Timelines kept for Gantt charts: (file, stages, link).
GANTT = tuple((f, 4, "nvlink") for f in FILES if "mbsweep" not in f and "resnet18" not in f)


def microbatches_for(schedule: str, stages: int) -> int:
    """The micro-batch rule of the sweep: M = N, unless the schedule fixes M (``mp``: 1)."""
    return get_schedule(schedule).microbatches or stages


def sweep(cal: Calibration, link_name: str) -> list[tuple[dict, list[dict] | None]]:
    """Simulate every schedule at every stage count the pair's blocks allow.

    Returns:
        (row, timeline records or None) per simulation.
    """
    link = LINKS[link_name]
    units = min(len(cal.teacher_fwd), len(cal.student_fwd))
    out = []
    for stages in (n for n in STAGES if n <= units):
        for schedule in SCHEDULES:
            micro = microbatches_for(schedule, stages)
            result, built, partition = simulate_calibration(cal, schedule, stages, micro, link)
            summary = result_dict(cal, built, partition, result, link)
            row = make_row(
                method=cal.method,
                schedule=schedule,
                model=cal.pair,
                stages=stages,
                microbatches=micro,
                global_batch=cal.batch,
                device=f"simulated H200 calibration, {link.gbps:g} GB/s link",
                samples_per_s=result.samples_per_s,
                step_ms=result.step_ms,
                efficiency=result.efficiency,
                bound_samples_per_s=result.bound_samples_per_s,
                bubble_fraction=result.bubble_fraction,
                simulated=True,
                link=link_name,
                link_gbps=link.gbps,
                latency_us=link.latency_us,
                cost_model="mbsweep" if cal.sweep else "linear",
                calibration=cal.source,
                views=built.views,
                backward_pieces=built.backward_pieces,
                balance=summary["balance"],
                teacher_balance=summary["teacher_balance"],
                balance_cap=result.balance_cap,
                microbatch_penalty=summary["microbatch_penalty"],
            )
            keep = (cal.source, stages, link_name) in GANTT and get_schedule(schedule).gantt
            compute = [r.to_dict() for r in result.records if not r.op.startswith(("SEND", "RECV"))]
            out.append((row, compute if keep else None))
        ddp = simulate_ddp(cal, stages, link)
        row = make_row(
            method=cal.method,
            schedule=DDP,
            model=cal.pair,
            stages=stages,
            microbatches=1,
            global_batch=cal.batch,
            device=f"simulated H200 calibration, {link.gbps:g} GB/s link",
            samples_per_s=ddp["samples_per_s"],
            step_ms=ddp["step_ms"],
            efficiency=ddp["efficiency"],
            bound_samples_per_s=ddp["bound_samples_per_s"],
            simulated=True,
            link=link_name,
            link_gbps=link.gbps,
            latency_us=link.latency_us,
            cost_model="mbsweep" if cal.sweep else "linear",
            calibration=cal.source,
            views=cal.views,
            allreduce_ms=ddp["allreduce_ms"],
            ddp_model="ring all-reduce of fp32 student gradients, fully overlapped with the backward",
            microbatch_penalty=cal.microbatch_penalty(cal.batch / stages),
        )
        out.append((row, None))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.simulate", description=__doc__)
    parser.add_argument("--calibration-dir", type=Path, default=Path("experiments/calibration/h200"))
    parser.add_argument("--out", type=Path, default=Path("results/simulated"))
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for name in FILES:
        path = args.calibration_dir / name
        if not path.exists():
            print(f"error: calibration file {path} not found; pass --calibration-dir", file=sys.stderr)
            return 2
        cal = load_calibration(path)
        for link_name in LINKS:
            for row, records in sweep(cal, link_name):
                rows.append(row)
                if records is not None:
                    stem = f"{Path(name).stem}_{row['schedule']}_N{row['stages']}_{link_name}"
                    write_rows(args.out / "timelines" / f"{stem}.jsonl", records)
        print(f"simulated {name}", file=sys.stderr)
    write_rows(args.out / "rows.jsonl", rows)
    print(f"wrote {len(rows)} rows to {args.out / 'rows.jsonl'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
