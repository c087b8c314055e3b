"""Tables and plots of the simulated paper-scale sweep (``make simulate``), from its rows only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import rows as R  # noqa: E402
from analysis.bench import colour  # noqa: E402
from analysis.compare import subject_name  # noqa: E402
from analysis.paper_scale import calibration_check_section, hybrid_table  # noqa: E402
from analysis.tables import int_cell, markdown_table  # noqa: E402
from analysis.timeline import load_records, plot_timelines, window  # noqa: E402
from core.schedules import order_of, schedules  # noqa: E402

COMMAND = "make simulate"


def others(rows: Sequence[dict]) -> list[str]:
    """Every schedule of the rows but the subject, in the registry's order."""
    return sorted({r["schedule"] for r in rows} - {subject_name()}, key=order_of)


def speedup_table(rows: Sequence[dict]) -> str:
    """One line per calibration, cost model, link and stage count: the subject's samples/s,
    configuration and efficiency, the balance cap, and its speedup over every other schedule
    (each at the configuration the rows hold: its best, or the ablation's M = N)."""
    df = R.frame(rows)
    ref = subject_name()
    compared = others(rows)
    lines = []
    keys = (
        ["calibration", "cost_model", "link", "stages"]
        if "cost_model" in df
        else ["calibration", "link", "stages"]
    )
    for _key, block in df.groupby(keys, sort=True):
        top = block[block["schedule"] == ref]
        if top.empty:
            continue
        ts = top.iloc[0].to_dict()
        speed = dict(zip(block["schedule"], block["samples_per_s"]))
        lines.append(
            [
                ts["calibration"].removesuffix(".json"),
                ts.get("cost_model"),
                f"{ts['link_gbps']:g} GB/s",
                ts["stages"],
                ts["microbatches"],
                ts.get("backward_pieces"),
                ts["samples_per_s"],
                ts["efficiency"],
                ts.get("balance_cap"),
                *[ts["samples_per_s"] / speed[s] if s in speed else None for s in compared],
                ts.get("microbatch_penalty"),
            ]
        )
    headers = [
        "calibration",
        "cost model",
        "link",
        "N",
        "M",
        "pieces",
        f"{ref} samples/s",
        f"{ref} eff.",
        "balance cap",
        *[f"{ref} / {s}" for s in compared],
        "M-batch penalty",
    ]
    return markdown_table(headers, lines)


def config_table(rows: Sequence[dict]) -> str:
    """Every schedule's best configuration (realistic model, 450 GB/s) per pair and N."""
    df = R.frame(rows)
    df = df[(df["link"] == "nvlink") & (df["cost_model"] != "linear")]
    lines = []
    for (cal, stages), block in df.groupby(["calibration", "stages"], sort=True):
        block = block.assign(_o=block["schedule"].map(order_of)).sort_values("_o")
        for r in R.records(block):
            lines.append(
                [
                    cal.removesuffix(".json"),
                    stages,
                    r["schedule"],
                    r["microbatches"],
                    r.get("backward_pieces"),
                    r["samples_per_s"],
                    r["efficiency"],
                    r.get("microbatch_penalty"),
                    r.get("mem_lower_bound_gib"),
                ]
            )
    headers = ["calibration", "N", "schedule", "best M", "pieces", "samples/s", "eff.", "M-batch penalty"]
    return markdown_table([*headers, "peak GiB/stage (lower bound)"], lines)


def plan_table(rows: Sequence[dict]) -> str:
    """The planner's choice (``kind: plan`` rows): per pair and N, every schedule at the best
    configuration the planner found, ranked (rank 1: the planner's pick), with peak memory."""
    df = R.frame(rows)
    if df.empty:
        return "missing: no planner rows; run `make simulate`.\n"
    df = df.sort_values(["calibration", "stages", "plan_rank"])
    lines = [
        [
            r["calibration"].removesuffix(".json"),
            r["stages"],
            int_cell(r["plan_rank"]),
            r["schedule"],
            int_cell(r["microbatches"]),
            int_cell(r.get("backward_pieces")),
            r.get("partition"),
            ",".join(str(k) for k in r["teacher_early"])
            if isinstance(r.get("teacher_early"), list)
            else None,
            r["samples_per_s"],
            r["efficiency"],
            r.get("bubble_fraction"),
            " ".join(f"{g:.2f}" for g in r["stage_mem_lower_bound_gib"]),
            r.get("mem_lower_bound_gib"),
        ]
        for r in R.records(df)
    ]
    headers = ["calibration", "N", "rank", "schedule", "M", "pieces", "partition", "teacher early"]
    headers += ["samples/s", "eff.", "bubble", "peak GiB per stage", "max GiB"]
    return markdown_table(headers, lines)


def plot_throughput(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """Simulated samples/s against N per schedule (each at its best configuration, realistic
    model), one PNG per calibration."""
    paths = []
    df = R.frame(rows)
    df = df[df["cost_model"] != "linear"]
    for cal in sorted(set(df["calibration"])):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for schedule in sorted(set(df["schedule"]), key=order_of):
            for link, style in (("nvlink", "-"), ("pcie", "--")):
                sel = df[(df["calibration"] == cal) & (df["schedule"] == schedule) & (df["link"] == link)]
                if sel.empty:
                    continue
                pts = sorted(zip(sel["stages"], sel["samples_per_s"]))
                gbps = sel["link_gbps"].iloc[0]
                ax.plot(
                    *zip(*pts), style, marker="o", color=colour(schedule), label=f"{schedule}, {gbps:g} GB/s"
                )
        ax.set_xscale("log", base=2)
        stages = sorted(set(df[df["calibration"] == cal]["stages"]))
        ax.set_xticks(stages, [str(n) for n in stages])
        ax.set_yscale("log")
        ax.set_xlabel("stages (GPUs)")
        ax.set_ylabel("samples/s (simulated)")
        ax.set_title(f"{cal.removesuffix('.json')}: simulated, each schedule at its best M and pieces")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"throughput_{cal.removesuffix('.json')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_gantts(timeline_dir: Path, out_dir: Path) -> list[Path]:
    """The simulated timelines the sweep kept (schedules whose spec asks for Gantt charts) side by
    side, one PNG per calibration, stage count and link."""
    kept = [s.name for s in schedules() if s.gantt]
    groups: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(timeline_dir.glob("*.jsonl")):
        for name in kept:
            if f"_{name}_N" in path.stem:
                groups.setdefault(path.stem.replace(f"_{name}_", "_", 1), []).append((name, path))
                break
    paths = []
    for stem, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members.sort(key=lambda m: order_of(m[0]))
        panels = [(f"{stem}: {name} (simulated)", window(load_records(path), 2, 4)) for name, path in members]
        paths.append(plot_timelines(panels, out_dir / f"gantt_{stem}.png", share_x=True))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.simulated", description=__doc__)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("results/simulated"))
    args = parser.parse_args(argv)
    rows_path = args.folder / "rows.jsonl"
    if not rows_path.exists():
        print(f"error: {rows_path} not found; run `{COMMAND}` first", file=sys.stderr)
        return 2
    df = R.read(rows_path, args.folder)
    sims = R.records(df[df["kind"] == "sim"])
    realistic = [r for r in sims if r["cost_model"] != "linear"]
    linear = [r for r in sims if r["cost_model"] == "linear"]
    planned = R.records(df[df["kind"] == "plan"])
    hybrid = R.records(df[df["kind"].isin(["sim", "hybrid"])])
    text = (
        "# Simulated throughput at paper scale (H200 calibration)\n\n"
        "**Every number here is simulated** by `core/simulate.py` from the per-block costs measured on one "
        "H200 (`experiments/calibration/h200/`), not measured on GPUs. Reproduce with `make simulate`.\n\n"
        + calibration_check_section(df)
        + "\n## Each schedule at its best configuration (realistic model)\n\n"
        "Micro-batches over the divisors of the batch up to 4N and backward pieces 1 or 2 (where a schedule may "
        "split), whichever gives the most samples/s; each SSL view is its own unit; partitions auto-balanced on "
        "the costs at the unit size. ddp is modelled, not simulated action by action: every GPU runs the whole "
        "teacher and student on batch / N samples, and the ring all-reduce of the fp32 student gradients "
        "(2 (N-1)/N x parameter bytes over the link) overlaps the backward completely (its best case). Links: "
        "450 GB/s (NVLink-class) and 25 GB/s (PCIe-class), 10 us latency. `balance cap` = (total work / N) / "
        "busiest stage.\n\n"
        + speedup_table(realistic)
        + "\n### Every schedule's best configuration (450 GB/s)\n\n"
        "Peak memory of the fullest stage (`core/memory.py`): units whose activations are alive at once "
        "(exact for the schedule) times the stage's block outputs (a lower bound of what autograd keeps), the "
        "teacher outputs held for the loss, and 16 B per student and 4 B per teacher parameter spread over the "
        "stages by block count. Compare schedules with it; do not read it as a GPU's memory use.\n\n"
        + config_table(realistic)
        + "\n## The schedules alone (linear model, ablation)\n\n"
        "Per-block costs scaled linearly with the micro-batch, unscaled; M = N, 2 backward pieces for every "
        "schedule that splits. An ablation of the schedules with equal work per sample, not a prediction.\n\n"
        + speedup_table(linear)
        + "\n## Planner's choice (realistic model, 450 GB/s)\n\n"
        "`python -m core.plan` per pair and N: every schedule that runs the pair (and ddp) over micro-batches "
        "(divisors of the batch), backward pieces and partition (balanced by cost, or uniform by block count, then a "
        "local search over the balance from each schedule's best on either: `core/partition_search.py`, partition "
        "`searched`), "
        "the tspipe family's early teacher forwards placed from costs (`core/placement.py`); each schedule's best, "
        "ranked by samples/s (rank 1: the planner's pick), with peak memory per stage (lower bound, as above; "
        "ddp: per replica). No memory limit here: `--memory-gib X` drops what does not fit.\n\n"
        + plan_table(planned)
        + "\n## Data-parallel replicas of a pipeline (dp x pp) beside ddp and one pipeline (realistic model, "
        "450 GB/s)\n\n"
        "G GPUs as dp replicas of a G / dp-stage pipeline (`core.runtime.replicas`), every pipeline schedule at "
        "its best M and pieces per replica, every dp >= 2 that leaves at least 2 stages; modelled as the runtime "
        "runs it (`core/paper_scale.py`): units of batch / (dp M) samples, the loss of the whole mini-batch, and "
        "each stage's optimizer step longer by a ring all-reduce over dp of its share of the fp32 student "
        "gradients, not overlapped with the backward. Beside it ddp (overlapped all-reduce, its best case) and "
        "the best single G-stage pipeline (empty where the pair has fewer blocks than G). Peak GiB: the fullest "
        "GPU's lower bound, as above (ddp: one replica holds the whole pair); one H200 holds about 139 GiB.\n\n"
        + hybrid_table(hybrid)
    )
    (args.folder / "TABLE.md").write_text(text)
    pngs = plot_throughput(sims, args.folder)
    pngs += plot_gantts(args.folder / "timelines", args.folder)
    print(f"wrote {args.folder / 'TABLE.md'} and {len(pngs)} PNGs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
