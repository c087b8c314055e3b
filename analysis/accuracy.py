"""Accuracy tables and plots (``make accuracy-*``) from result rows only.

Usage: ``python -m analysis.accuracy results/byol/accuracy --title ... --command ...`` writes
``TABLE.md`` (final metric per label: mean, spread and every seed; each other label minus the
first, paired by seed with its 95 % interval and what the interval supports; the teacher drift
where rows hold it) and ``accuracy_by_epoch.png`` (mean over seeds, shaded between min and max).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import rows as R  # noqa: E402
from analysis.compare import SYNC_LABELS, paired_difference, verdict  # noqa: E402
from analysis.tables import markdown_table  # noqa: E402


def summary(rows: Sequence[dict]) -> list[dict]:
    """Per label: seeds, mean, standard deviation, min, max of the final metric."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("metric_value") is not None and r.get("label"):
            by_label[r["label"]].append(r)
    out = []
    for label, group in by_label.items():
        values = [r["metric_value"] for r in sorted(group, key=lambda r: r["seed"])]
        out.append(
            {
                "label": label,
                "schedule": group[0]["schedule"],
                "metric": group[0]["metric"],
                "seeds": [r["seed"] for r in sorted(group, key=lambda r: r["seed"])],
                "values": values,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        )
    return out


def summary_table(rows: Sequence[dict]) -> str:
    lines = []
    for s in summary(rows):
        lines.append(
            [
                s["label"],
                s["schedule"],
                len(s["values"]),
                100 * s["mean"],
                100 * s["std"],
                100 * s["min"],
                100 * s["max"],
                ", ".join(f"{100 * v:.2f}" for v in s["values"]),
            ]
        )
    headers = ["run", "schedule", "seeds", "mean %", "std %", "min %", "max %", "per seed %"]
    return markdown_table(headers, lines, digits=2)


INIT = "init"  # the label of each seed's initial weights evaluated (experiments.accuracy.initial_rows)


def paired_lines(rows: Sequence[dict]) -> str:
    """Each label minus the synchronous run (a label of ``SYNC_LABELS``, else the first), paired
    by seed, in points, with
    its 95 % Student-t interval and what it supports (``analysis.compare.verdict``); first, where
    the rows hold the initial weights' metric, what training gained over them."""
    labels = [s["label"] for s in summary(rows) if s["label"] != INIT]
    base = next((k for k in SYNC_LABELS if k in labels), labels[0] if labels else None)
    labels = [base, *(k for k in labels if k != base)] if base else []
    frame = pd.DataFrame(
        [{"seed": r["seed"], "label": r["label"], "metric_value": r["metric_value"]} for r in rows]
    )
    lines = []
    if labels and INIT in set(frame["label"]):  # what training gained over the initial weights
        d = paired_difference(frame, INIT, labels[0])
        if d is not None:
            lines.append(
                f"- {labels[0]} - {INIT} (what training gained over each seed's initial weights, {d['seeds']} "
                f"seeds): {100 * d['mean']:+.2f} points, 95 % interval [{100 * d['low']:+.2f}, "
                f"{100 * d['high']:+.2f}]."
            )
    for other in labels[1:]:
        d = paired_difference(frame, labels[0], other)
        if d is None:
            lines.append(f"- {other} - {labels[0]}: fewer than two common seeds.")
            continue
        lines.append(
            f"- {other} - {labels[0]}, paired by seed ({d['seeds']} seeds): {100 * d['mean']:+.2f} points, "
            f"95 % interval [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] (Student t); {verdict(d)}."
        )
    return "\n".join(lines) + "\n" if lines else ""


def plot_by_epoch(rows: Sequence[dict], out: Path, title: str, metric: str) -> Path | None:
    """Metric against epoch per label: mean over seeds, shaded min..max."""
    curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for e in r.get("evals") or []:
            if metric in e and r.get("label"):
                curves[r["label"]][round(e["epoch"], 3)].append(e[metric])
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(curves.items()):
        epochs = sorted(points)
        means = [100 * statistics.fmean(points[e]) for e in epochs]
        lo = [100 * min(points[e]) for e in epochs]
        hi = [100 * max(points[e]) for e in epochs]
        (line,) = ax.plot(
            epochs, means, marker="o", label=f"{label} (mean of {len(points[epochs[-1]])} seeds)"
        )
        ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def drift_table(rows: Sequence[dict]) -> str | None:
    """Relative L2 distance between the stale (tspipe) and the synchronous teacher per epoch."""
    drift = [r for r in rows if r.get("metric") == "teacher_drift_rel_l2"]
    if not drift:
        return None
    lines = [[r["epoch"], r["metric_value"], r["seed"]] for r in sorted(drift, key=lambda r: r["epoch"])]
    return markdown_table(["epoch", "relative L2 (stale vs synchronous teacher)", "seed"], lines, digits=4)


def dates(rows: Sequence[dict]) -> str:
    """The rows' date, or their first and last dates when they were made at different times."""
    found = sorted({str(r["date"]) for r in rows})
    return found[0] if len(found) == 1 else f"{found[0]} to {found[-1]}"


def write_report(folder: Path, title: str, command: str) -> Path:
    rows = R.records(R.read(folder / "rows.jsonl"))
    runs = [r for r in rows if r.get("label")]
    first = runs[0]
    text = (
        f"# {title}\n\nMeasured with `{command}` (device {first['device']}, torch {first['torch']}, "
        f"git {', '.join(sorted({str(r['git_sha']) for r in runs}))}, {dates(runs)}). Final {first['metric']} after {first.get('epochs', 0):.0f} "
        f"epochs; every run of a seed sees the same data order, augmentations and initial weights.\n\n"
        + summary_table(runs)
        + "\n"
        + paired_lines([r for r in runs if r.get("metric_value") is not None])
    )
    drift = drift_table(rows)
    if drift:
        text += "\n## Teacher drift\n\n" + drift
    (folder / "TABLE.md").write_text(text)
    plot_by_epoch(runs, folder / "accuracy_by_epoch.png", title, first["metric"])
    return folder / "TABLE.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.accuracy", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--title", default="Accuracy")
    parser.add_argument("--command", default="make accuracy")
    args = parser.parse_args(argv)
    if not (args.folder / "rows.jsonl").exists():
        print(f"error: {args.folder / 'rows.jsonl'} not found; run `{args.command}` first", file=sys.stderr)
        return 2
    print(f"wrote {write_report(args.folder, args.title, args.command)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
