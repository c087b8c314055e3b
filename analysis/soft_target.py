"""Soft-target KD tables from result rows only (the ``make accuracy-kd`` table, and the KD notes
under the ``make bench-kd`` table).

Usage::

    python -m analysis.soft_target accuracy results/soft_target/accuracy
    python -m analysis.soft_target bench results/soft_target   # after analysis.bench

``accuracy`` writes ``TABLE.md`` and ``top1_by_epoch.png``; ``bench`` appends a section to the
``TABLE.md`` that ``analysis.bench`` wrote: the teacher's share of a step (the work tspipe can
hide) and tspipe's measured speedup over gpipe, 1f1b, mp, the torch peer, ddp and sequential.
Like ``analysis/``, it reads rows and nothing else.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import rows as R
from analysis.accuracy import plot_by_epoch
from analysis.compare import paired_difference, subject_name
from analysis.tables import markdown_table
from core.schedules import order_of

LABELS = ("teacher", "student-alone", "kd-sequential", "kd-tspipe")
BENCH_MARK = "## Soft-target KD: what tspipe can hide"


def _final(rows: Sequence[dict], label: str) -> list[dict]:
    return sorted(
        (r for r in rows if r.get("label") == label and r.get("metric") == "top1"), key=lambda r: r["seed"]
    )


def accuracy_table(rows: Sequence[dict]) -> str:
    """Markdown: top-1 of the teacher and of each student run (mean and per seed), the KD gain
    over the student alone, and the largest parameter difference between the tspipe and the
    sequential student."""
    lines = []
    for label in [*LABELS, *sorted({r["label"] for r in rows if r.get("label")} - set(LABELS))]:
        group = _final(rows, label)
        if not group:
            continue
        values = [100 * r["metric_value"] for r in group]
        first = group[0]
        minutes = None
        if first.get("step_ms") and first.get("steps"):
            minutes = statistics.fmean(r["step_ms"] * r["steps"] for r in group) / 6e4
        elif first.get("train_s"):
            minutes = first["train_s"] / 60
        lines.append(
            [
                label,
                first["model"],
                first["schedule"],
                int(first.get("processes") or first.get("stages") or 1),
                len(group),
                f"{statistics.fmean(values):.2f}",
                ", ".join(f"{v:.2f}" for v in values),
                first.get("epochs"),
                minutes,
            ]
        )
    headers = [
        "run",
        "model",
        "schedule",
        "processes",
        "seeds",
        "top-1 % (mean)",
        "per seed %",
        "epochs",
        "training min (median step x steps)",
    ]
    text = markdown_table(headers, lines, digits=2)
    alone, kd_seq, kd_ts = (_final(rows, x) for x in ("student-alone", "kd-sequential", "kd-tspipe"))
    notes = []
    if alone and kd_seq:
        gain = statistics.fmean(r["metric_value"] for r in kd_seq) - statistics.fmean(
            r["metric_value"] for r in alone
        )
        notes.append(f"KD gain over the student alone (sequential): {100 * gain:+.2f} points of top-1.")
        paired = paired_difference(pd.DataFrame([*alone, *kd_seq]), "student-alone", "kd-sequential")
        if paired:
            notes.append(
                f"Paired by seed ({paired['seeds']} seeds): {100 * paired['mean']:+.2f} points, 95 % interval "
                f"[{100 * paired['low']:+.2f}, {100 * paired['high']:+.2f}] (Student t)."
            )
    if kd_seq and kd_ts:
        gap = max(abs(a["metric_value"] - b["metric_value"]) for a, b in zip(kd_seq, kd_ts))
        notes.append(
            f"Largest top-1 gap between the tspipe and the sequential KD student: {100 * gap:.2f} points."
        )
    for r in sorted((r for r in rows if r.get("metric") == "max_abs_param_diff"), key=lambda r: r["seed"]):
        notes.append(
            f"Largest parameter difference between the tspipe and the sequential student after training "
            f"(seed {r['seed']}): {r['metric_value']:.3g} (relative L2 {r.get('relative_l2', float('nan')):.3g})."
        )
    return text + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")


def write_accuracy_report(folder: Path, title: str, command: str) -> Path:
    """``TABLE.md`` and ``top1_by_epoch.png`` for the rows in ``folder/rows.jsonl``."""
    rows = R.records(R.read(folder / "rows.jsonl"))
    runs = [r for r in rows if r.get("label") and r.get("evals")]
    first = runs[0] if runs else rows[0]
    setting = ""
    if runs:
        setting = (
            f" Students: {first['model']}, {int(first['steps'])} steps of {int(first['global_batch'])} images "
            f"({first.get('epochs', 0):.0f} epochs of the training subset), {int(first['microbatches'])} "
            "micro-batches; "
            "every student of a seed sees the same data order and initial weights."
        )
    text = (
        f"# {title}\n\nMeasured with `{command}` (device {first['device']}, torch {first['torch']}, "
        f"git {first['git_sha']}, {first['date']}). Top-1 on the {int(first.get('test_images') or 0) or 'held-out'} "
        f"{first.get('dataset') or ''} test images after the last epoch.{setting}\n\n" + accuracy_table(rows)
    )
    (folder / "TABLE.md").write_text(text)
    if runs:
        plot_by_epoch(runs, folder / "top1_by_epoch.png", title, "top1")
    return folder / "TABLE.md"


def _best(rows: Sequence[dict], schedule: str) -> dict | None:
    group = [r for r in rows if r["schedule"] == schedule]
    return max(group, key=lambda r: r["samples_per_s"]) if group else None


def bench_section(rows: Sequence[dict]) -> str:
    """Markdown: the teacher forward share of a step and tspipe's speedup (best micro-batch
    count of each) over every other schedule and runner."""
    ref = subject_name()
    shares = sorted(
        (r["microbatches"], r["teacher_fwd_share"])
        for r in rows
        if r["schedule"] == ref and r.get("teacher_fwd_share") is not None
    )
    by_unit = {f"M={m}": v for m, v in shares}
    share = shares[-1][1] if shares else None
    text = f"{BENCH_MARK}\n\n"
    if share is not None:
        text += (
            f"The teacher forward is {100 * share:.0f}% of one step's compute (teacher forward / (teacher "
            "forward + student forward + student backward), from the per-block costs profiled in this run"
            + (
                ", by micro-batch count: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in by_unit.items())
                if by_unit
                else ""
            )
            + "). That is the work tspipe schedules into the student's pipeline bubbles; the frozen "
            "teacher makes it exact (no staleness).\n\n"
        )
    ts = _best(rows, ref)
    if ts is None:
        return text + f"No {ref} row.\n"
    lines = []
    for schedule in sorted({r["schedule"] for r in rows} - {ref}, key=order_of):
        other = _best(rows, schedule)
        if other is not None:
            lines.append(
                [
                    schedule,
                    other["microbatches"],
                    other["samples_per_s"],
                    ts["samples_per_s"] / other["samples_per_s"],
                ]
            )
    headers = ["compared with", "its best M", "its samples/s", f"{ref} (M={ts['microbatches']}) / it"]
    return text + markdown_table(headers, lines)


def append_bench_section(folder: Path) -> Path:
    """Append (or replace) the KD section of ``folder/TABLE.md``."""
    rows = R.records(R.read(folder / "rows.jsonl"))
    table = folder / "TABLE.md"
    text = table.read_text() if table.exists() else ""
    if BENCH_MARK in text:
        text = text[: text.index(BENCH_MARK)]
    table.write_text(text.rstrip("\n") + "\n\n" + bench_section(rows))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.soft_target", description=__doc__)
    parser.add_argument("kind", choices=("accuracy", "bench"))
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--title", default="Soft-target KD accuracy: teacher, student alone, sequential and tspipe KD"
    )
    parser.add_argument("--command", default="make accuracy-kd")
    args = parser.parse_args(argv)
    if not (args.folder / "rows.jsonl").exists():
        make = "make accuracy-kd" if args.kind == "accuracy" else "make bench-kd"
        print(f"error: {args.folder / 'rows.jsonl'} not found; run `{make}` first", file=sys.stderr)
        return 2
    if args.kind == "accuracy":
        path = write_accuracy_report(args.folder, args.title, args.command)
    else:
        path = append_bench_section(args.folder)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
