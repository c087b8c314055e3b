"""The staleness curve (``make staleness-*``) from result rows only: per teacher lookahead L,
the final metric's mean over seeds, and the paired difference to L = 0 (by seed) with its 95 %
Student-t interval; a plot of the metric against L. Where the sweep ran the symmetric ablation
(label ``symmetric``: L = 1 and the student's gradients one step late), a second table pairs it
with L = 0 and L = 1.

``python -m analysis.staleness results/moco_v3/staleness --title ... --command ...`` writes
``TABLE.md`` and ``staleness.png`` in that folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

from analysis import rows as R  # noqa: E402
from analysis.compare import paired_difference  # noqa: E402
from analysis.tables import markdown  # noqa: E402


def _final(rows: pd.DataFrame) -> pd.DataFrame:
    """One final metric per (label, seed), with L from the label ``L<k>``."""
    runs = rows[rows["label"].astype(str).str.fullmatch(r"L\d+") & rows["metric_value"].notna()].copy()
    runs["lookahead"] = runs["label"].str[1:].astype(int)
    return runs


def staleness_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per L: seeds, mean and spread of the metric (in %), and ``L - L0`` paired by seed: its
    mean and 95 % interval in points (empty where fewer than two seeds pair up); where the rows
    hold each seed's initial weights evaluated, the mean gain over them."""
    runs, init = _final(rows), initial(rows)
    gain = None
    if init is not None:  # per L: the mean over seeds of (final - initial), paired by seed
        final = runs.pivot_table(index="seed", columns="lookahead", values="metric_value", aggfunc="first")
        gain = final.sub(init, axis=0).mean()
    out = []
    for lookahead, group in sorted(runs.groupby("lookahead"), key=lambda kv: kv[0]):
        values = group.sort_values("seed")["metric_value"].astype(float) * 100
        d = paired_difference(runs, "L0", f"L{lookahead}") if lookahead else None
        out.append(
            {
                "L": lookahead,
                "seeds": len(values),
                "mean %": values.mean(),
                "std %": values.std() if len(values) > 1 else 0.0,
                "per seed %": ", ".join(f"{v:.2f}" for v in values),
                "L - L0 (points)": None if d is None else 100 * d["mean"],
                "95 % interval": None if d is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]",
                "interval excludes 0": None if d is None else bool(d["low"] > 0 or d["high"] < 0),
                **({"gain over init (points)": 100 * float(gain[lookahead])} if gain is not None else {}),
            }
        )
    return pd.DataFrame(out)


def symmetric_table(rows: pd.DataFrame) -> pd.DataFrame | None:
    """The symmetric ablation against L = 0 and L = 1, paired by seed (mean and 95 % interval in
    points); None where the rows hold no symmetric run."""
    runs = rows[rows["label"].isin(["L0", "L1", "symmetric"]) & rows["metric_value"].notna()]
    sym = runs[runs["label"] == "symmetric"]
    if sym.empty:
        return None
    values = sym.sort_values("seed")["metric_value"].astype(float) * 100
    out = []
    for base, meaning in (
        ("L0", "the student and teacher one step late"),
        ("L1", "the student one step late"),
    ):
        d = paired_difference(runs, base, "symmetric")
        out.append(
            {
                "comparison": f"symmetric - {base}",
                "what it prices": meaning,
                "seeds": len(values) if d is None else d["seeds"],
                "symmetric mean %": values.mean(),
                "difference (points)": None if d is None else 100 * d["mean"],
                "95 % interval": None if d is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]",
                "interval excludes 0": None if d is None else bool(d["low"] > 0 or d["high"] < 0),
            }
        )
    return pd.DataFrame(out)


def _symmetric_text(rows: pd.DataFrame) -> str:
    table = symmetric_table(rows)
    if table is None:
        return ""
    return (
        "\n\nThe paper's symmetric ablation (label `symmetric`: L = 1, and the student's gradients "
        "applied one step late too), paired by seed:\n\n" + markdown(table, digits=2)
    )


def initial(rows: pd.DataFrame) -> pd.Series | None:
    """Each seed's metric at its initial weights (rows labelled ``init``), None without them."""
    init = rows[(rows["label"] == "init") & rows["metric_value"].notna()]
    init = init.drop_duplicates("seed", keep="last")
    return None if init.empty else init.set_index("seed")["metric_value"].astype(float)


def common_overrides(rows: pd.DataFrame) -> list[str]:
    """The config overrides every run shares besides its lookahead (``experiments.staleness
    --set``), in the runs' order; none when the rows do not list them."""
    runs = _final(rows)
    if "overrides" not in runs or runs.empty:
        return []
    lists = [
        [o for o in (v if isinstance(v, list) else []) if not o.startswith("pipeline.teacher_lookahead=")]
        for v in runs["overrides"]
    ]
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def _overrides_line(rows: pd.DataFrame) -> str:
    extra = common_overrides(rows)
    return f" Every run with `{' '.join(extra)}`." if extra else ""


def plot(rows: pd.DataFrame, out: Path, title: str) -> Path | None:
    """The metric against L: each seed's runs (thin) and the mean with its 95 % interval."""
    runs = _final(rows)
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for _, group in runs.groupby("seed"):
        g = group.sort_values("lookahead")
        ax.plot(g["lookahead"], 100 * g["metric_value"], color="0.75", lw=0.8, marker=".")
    stats = runs.groupby("lookahead")["metric_value"].agg(["mean", "std", "count"]).sort_index()
    half = [
        (student_t.ppf(0.975, n - 1) * s / n**0.5 if n > 1 else 0.0)
        for s, n in zip(stats["std"], stats["count"])
    ]
    ax.errorbar(
        stats.index, 100 * stats["mean"], yerr=[100 * h for h in half], color="C0", marker="o", capsize=3
    )
    ax.set_xlabel("teacher lookahead L (versions behind)")
    ax.set_ylabel(f"final {runs['metric'].iloc[0]} (%)")
    ax.set_xticks(list(stats.index))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def headline_pairs(folder: Path) -> list[dict]:
    """What the report's headline takes from the sweep under ``folder`` ([] without rows): L = 1
    (TSPipe's own staleness) and the symmetric ablation, each against L = 0 (the synchronous
    teacher) paired by seed, with the gain of L = 0 over the initial weights."""
    if not (folder / "rows.jsonl").exists():
        return []
    rows = R.read(folder / "rows.jsonl")
    runs = rows[rows["metric_value"].notna()]
    means = runs.groupby("label")["metric_value"].mean()
    out = []
    for other in ("L1", "symmetric"):
        if "L0" not in means.index or other not in means.index:
            continue
        d = paired_difference(runs, "L0", other)
        out.append(
            {
                "label": other,
                "metric": str(runs["metric"].iloc[0]),
                "sync": float(means["L0"]),
                "other": float(means[other]),
                "paired": d,
                "gain": paired_difference(runs, "init", "L0") if "init" in means.index else None,
                "seeds": d["seeds"] if d else int((runs["label"] == other).sum()),
            }
        )
    return out


def staleness_section(folder: Path, rel: str) -> str | None:
    """The report's staleness table for the sweep under ``folder`` (None without rows);
    ``rel``: the folder as the report links it."""
    if not (folder / "rows.jsonl").exists():
        return None
    rows = R.read(folder / "rows.jsonl")
    first = rows.iloc[0]
    text = (
        f"Staleness (teacher lookahead L: the teacher serving batch b is version b - L; made by "
        f"`{first.get('command') or 'experiments.staleness'}`, git {first['git_sha']}): final "
        f"{first['metric']} per L, and L - L0 paired by seed with its 95 % Student-t interval."
        f"{_overrides_line(rows)}\n\n" + markdown(staleness_table(rows), digits=2) + _symmetric_text(rows)
    )
    if (folder / "staleness.png").exists():
        text += f"\n![staleness]({rel}/staleness.png)\n"
    return text


def write_report(folder: Path, title: str, command: str) -> Path:
    """``TABLE.md`` and ``staleness.png`` in ``folder`` from its ``rows.jsonl``."""
    rows = R.read(folder / "rows.jsonl")
    table = staleness_table(rows)
    image = plot(rows, folder / "staleness.png", title)
    first = rows.iloc[0]
    text = [
        f"# {title}\n",
        f"Made by `{command}` (git {first['git_sha']}, {first['date']}): per teacher lookahead L, the final "
        f"{first['metric']} over seeds, and L - L0 paired by seed with its 95 % Student-t interval."
        f"{_overrides_line(rows)}\n",
        markdown(table, digits=2) + _symmetric_text(rows),
    ]
    if image:
        text.append(f"\n![staleness]({image.name})\n")
    path = folder / "TABLE.md"
    path.write_text("\n".join(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.staleness", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--title", default="Staleness")
    parser.add_argument("--command", default="make staleness")
    args = parser.parse_args(argv)
    if not (args.folder / "rows.jsonl").exists():
        print(f"error: {args.folder / 'rows.jsonl'} does not exist; run the sweep first", file=sys.stderr)
        return 2
    print(write_report(args.folder, args.title, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
