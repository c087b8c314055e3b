"""Tables and plots of a throughput benchmark (``make bench-*``), built from its rows only.

Usage: ``python -m analysis.bench results/engine [--title TEXT]`` writes ``TABLE.md``,
``throughput.png`` and the Gantt charts of measured against simulated timelines (of the
schedules whose spec asks for them) into the same folder. Schedules are ordered, coloured and
compared as the schedule registry says: every row's speed beside the subject's (tspipe).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import rows as R  # noqa: E402
from analysis.compare import best_per_schedule, ratio, subject_name  # noqa: E402
from analysis.fidelity import timeline_tables  # noqa: E402
from analysis.replay import read_replay, run_table, write_replay  # noqa: E402
from analysis.tables import markdown, markdown_table  # noqa: E402
from analysis.timeline import load_records, plot_timelines, window  # noqa: E402
from core.schedules import SCHEDULES, order_of, schedules  # noqa: E402


def colour(schedule: str) -> str:
    """A schedule's plot colour (the registry's; grey for unknown names)."""
    spec = SCHEDULES.get(schedule)
    return spec.colour if spec else "#888888"


def _key(row: dict) -> tuple:
    return (order_of(row["schedule"]), row["microbatches"])


def subject_best(df: pd.DataFrame) -> dict | None:
    """The subject's row at its best micro-batch count, or None."""
    best = best_per_schedule(df)
    top = best[best["schedule"] == subject_name()]
    return top.iloc[0].to_dict() if not top.empty else None


def ratios(rows: Sequence[dict]) -> dict[tuple[str, int], float]:
    """The subject at its best over each row's samples/s, keyed by (schedule, micro-batches)."""
    df = R.frame(rows)
    top = subject_best(df)
    if top is None:
        return {}
    return {
        (r["schedule"], r["microbatches"]): top["samples_per_s"] / r["samples_per_s"] for r in R.records(df)
    }


def _spread(r: dict) -> str | None:
    low, high = r.get("samples_per_s_min"), r.get("samples_per_s_max")
    return f"{low:,.0f}-{high:,.0f}" if low is not None and high is not None else None


def bench_table(rows: Sequence[dict]) -> str:
    """Markdown table: measured samples/s and its range over the rounds, the subject's (at its
    best) speedup over it, efficiency against the bubble-free bound, the simulator's prediction
    and its error, bubble share, peak memory."""
    df = R.frame(rows)
    speedup = ratios(rows)
    df = df.assign(_o=df["schedule"].map(order_of)).sort_values(["_o", "microbatches"], kind="stable")
    lines = [
        [
            r["schedule"],
            r["stages"],
            r["microbatches"],
            r["samples_per_s"],
            _spread(r),
            speedup.get((r["schedule"], r["microbatches"])),
            r["efficiency"],
            r["bound_samples_per_s"],
            r.get("predicted_samples_per_s"),
            r["prediction_error"] * 100 if r.get("prediction_error") is not None else None,
            r["bubble_fraction"],
            r["peak_mem_gib"],
        ]
        for r in R.records(df)
    ]
    headers = [
        "schedule",
        "processes",
        "M",
        "samples/s",
        "range (rounds)",
        f"{subject_name()} speedup",
        "efficiency",
        "bound samples/s",
        "simulated samples/s",
        "sim. error %",
        "bubble (measured)",
        "peak mem GiB",
    ]
    return markdown_table(headers, lines)


def best_table(rows: Sequence[dict]) -> str:
    """Markdown: every schedule at its best micro-batch count, and the subject at its best over
    it, with the range of the ratio over the rounds ("no clear difference" when they overlap)."""
    df = R.frame(rows)
    top = subject_best(df)
    lines = []
    for r in R.records(best_per_schedule(df)):
        lines.append(
            [
                r["schedule"],
                r["microbatches"],
                r["samples_per_s"],
                _spread(r),
                ratio(top, r).text() if top else None,
            ]
        )
    ref = subject_name()
    return markdown_table(
        ["schedule", "its best M", "samples/s", "range (rounds)", f"{ref} at its best / it"], lines
    )


def plot_throughput(rows: Sequence[dict], out: Path, title: str) -> Path:
    """Bar chart of measured samples/s per run, simulated predictions as black ticks."""
    rows = sorted(rows, key=_key)

    def fixed_m(name: str) -> bool:
        spec = SCHEDULES.get(name)
        return bool(spec and spec.microbatches)

    labels = [
        r["schedule"] if fixed_m(r["schedule"]) else f"{r['schedule']}\nM={r['microbatches']}" for r in rows
    ]
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    errors = [
        [r["samples_per_s"] - (r.get("samples_per_s_min") or r["samples_per_s"]) for r in rows],
        [(r.get("samples_per_s_max") or r["samples_per_s"]) - r["samples_per_s"] for r in rows],
    ]
    ax.bar(
        xs,
        [r["samples_per_s"] for r in rows],
        yerr=errors,
        capsize=2,
        color=[colour(r["schedule"]) for r in rows],
    )
    for x, r in zip(xs, rows):
        ax.text(x, r["samples_per_s"], f"{r['samples_per_s']:.0f}", ha="center", va="bottom", fontsize=7)
        if r.get("predicted_samples_per_s"):
            ax.plot([x - 0.35, x + 0.35], [r["predicted_samples_per_s"]] * 2, color="black", linewidth=1.5)
    ax.plot([], [], color="black", linewidth=1.5, label="simulated prediction")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("samples/s (measured; bars: range over rounds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_gantts(folder: Path, rows: Sequence[dict]) -> list[Path]:
    """Measured against simulated timelines (two steady-state steps) of the schedules whose
    timelines the benchmark kept."""
    paths = []
    warmup = max((r.get("warmup_steps") or 0) for r in rows) if rows else 0
    for schedule in (spec.name for spec in schedules() if spec.gantt):
        for measured in sorted((folder / "timelines").glob(f"{schedule}_*.measured.jsonl")):
            simulated = measured.with_name(measured.name.replace(".measured", ".simulated"))
            name = measured.name.removesuffix(".measured.jsonl")
            panels = [(f"{name}: measured", window(load_records(measured), warmup + 1, warmup + 2))]
            if simulated.exists():
                panels.append((f"{name}: simulated (same costs)", window(load_records(simulated), 3, 4)))
            paths.append(plot_timelines(panels, folder / f"gantt_{name}.png", share_x=True))
    return paths


def default_title(rows: Sequence[dict]) -> str:
    """``BYOL throughput, resnet18w16-32px, 2 stages, cpu (1 thread/process)`` from the rows."""
    first = rows[0]
    stages = max(r["stages"] for r in rows)
    title = first.get("method_title") or first["method"]
    return f"{title} throughput, {first['model']}, {stages} stages, {first['device']}"


def write_report(folder: Path, title: str | None = None, command: str | None = None) -> Path:
    """TABLE.md and PNGs for the rows in ``folder/rows.jsonl`` (title and command from the rows
    unless given)."""
    frame = R.read(folder / "rows.jsonl")
    rows = R.records(frame)
    first = rows[0]
    title = title or default_title(rows)
    command = command or first.get("command") or "python -m experiments.bench"
    ref = subject_name()
    env = f"device {first['device']}, torch {first['torch']}, git {first['git_sha']}, {first['date']}"
    notes = (
        f"# {title}\n\nMeasured with `{command}` ({env}). Global batch {first['global_batch']} "
        f"samples; {first.get('rounds')} interleaved rounds of {first.get('warmup_steps')} warm-up and "
        f"{first.get('timed_steps')} timed steps, of which the steady-state ones count (not the last: a schedule "
        "that overlaps steps does less in it, and one whose teacher runs k batches ahead, as a staggered "
        "frozen teacher does, in its last k). samples/s: the median of the rounds' medians (all processes "
        f"finished); *range*: the slowest and fastest round. *{ref} speedup* = {ref} at its best M over this row. "
        "*efficiency* = samples/s / bound, the bound being processes x batch / (all work of one mini-batch on one "
        "process), from per-block costs profiled in the same run (a fixed + per-sample fit over the profiled "
        "unit sizes) and scaled to reproduce the measured one-process step (blocks timed alone run faster than "
        "inside a training step; for several processes, the step measured on every process at once: a block is "
        "slower when every core is busy). *simulated samples/s* is the simulator's prediction (labelled "
        "simulated) from the same costs and the measured link (bandwidth, latency, the per-message cost of "
        "each send and receive, and what a wait for a message costs the stage that waited), made for each round "
        "from that round's one-process runs: the median over the rounds; *sim. error %*: the median over the "
        "rounds of each round's prediction over its measurement, less 1. ddp's prediction is one replica's "
        "work plus a ring all-reduce, the torch peer's a teacher pass plus a student pass.\n\n"
    )
    text = notes + bench_table(rows) + "\n## Each schedule at its best\n\n" + best_table(rows)
    tables = timeline_tables(folder, int(first.get("warmup_steps") or 0))
    if not tables["kinds"].empty:
        text += (
            "\n## Where the predictions miss\n\n"
            "Measured over simulated time of a steady step, per op kind summed over the stages and for the "
            "whole step, from the kept timelines (`analysis.fidelity`). Above 1: work the simulator "
            "under-charges; a step ratio above every kind's is time spent waiting, not computing.\n\n"
            + markdown(tables["kinds"], digits=2)
            + "\n\n### By stage\n\n"
            "The same ratios on each stage alone: a kind at about 1 in the sum whose stages err in opposite "
            "directions is work the simulator puts on the wrong stage (the blocks' relative costs inside the "
            "pipeline differ from the profile's), which moves the bottleneck.\n\n"
            + markdown(tables["stages"], digits=2)
            + "\n\n## Gaps between actions, by the messages between them\n\n"
            "The median time in ms from the end of one action of a stage to the start of its next, over the "
            "steady mini-batches of the kept timelines, by what the schedule puts between them: a send after "
            "the first action, a receive before the second (its wait for the data included), both, or no "
            "message (`analysis.fidelity.timeline_tables`); measured and simulated.\n\n"
            + markdown(tables["gaps"], digits=2)
            + "\n"
        )
    if (folder / "runs").is_dir():  # the kept runs are not committed; their replay is
        write_replay(folder, frame)
    kept, state = read_replay(folder)
    replayed = run_table(kept)
    if state == "stale":
        text += (
            "\n## Replayed on each run's own compute\n\nstale: `replay.jsonl` goes with older rows, and "
            "this folder keeps no runs to replay again.\n"
        )
    if not replayed.empty:
        text += (
            "\n## Replayed on each run's own compute\n\n"
            "Every round of every action-list run replayed by the simulator's dry run with each compute action "
            "taking the time the run timed for it, the messages charged by the run's link model (`analysis.replay`). "
            "*Replay error*: the error of the schedule's order, its waits and the message model alone (the "
            "median over the rounds; signed like *sim. error*). *Compute part*: what remains of the row's "
            "error, (1 + sim. error) / (1 + replay error) - 1 per round, the median: the run's compute against "
            "the profile. *Compute spread*: the run's slowest round over its fastest in compute per steady "
            "step, less 1: what the machine alone moved the same run by.\n\n" + markdown(replayed, digits=2)
        )
    (folder / "TABLE.md").write_text(text)
    plot_throughput(rows, folder / "throughput.png", f"{title} (measured)")
    plot_gantts(folder, rows)
    return folder / "TABLE.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--title", default=None, help="default: from the rows")
    parser.add_argument("--command", default=None, help="default: the command named in the rows")
    args = parser.parse_args(argv)
    if not (args.folder / "rows.jsonl").exists():
        print(f"error: {args.folder / 'rows.jsonl'} not found; run `make bench-*` first", file=sys.stderr)
        return 2
    print(f"wrote {write_report(args.folder, args.title, args.command)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
