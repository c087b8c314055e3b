"""Gantt charts of timelines (simulated or measured records) as PNG files.

``python -m analysis.timeline RECORDS.jsonl [MORE.jsonl ...] --out OUT.png`` draws one panel
per records file (``python -m core.simulate ... --timeline RECORDS.jsonl`` writes one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from core.action import LETTERS, OPS, Op  # noqa: E402  (op letters and labels: one definition)

# op -> (colour for even mini-batches, colour for odd mini-batches)
_COLOURS: dict[str, tuple[str, str]] = {
    "TF": ("#59a14f", "#2f6b2a"),
    "SF": ("#4e79a7", "#2a4d73"),
    "SB": ("#f28e2b", "#b35f0f"),
    "SW": ("#edc948", "#b0901a"),
    "LOSS": ("#e15759", "#a02c2e"),
    "OPT": ("#b07aa1", "#7a4a6e"),
}
# op -> (legend label, colour for even mini-batches, colour for odd mini-batches)
STYLE: dict[str, tuple[str, str, str]] = {
    op: (OPS[Op(op)].label, *colours) for op, colours in _COLOURS.items()
}
IDLE_COLOUR = "#e6e6e6"


def load_records(path: Path) -> list[dict]:
    """Read timeline records (JSON lines, the fields of ``core.metrics.TimelineRecord``)."""
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _runs(records: Sequence[dict]) -> list[tuple[int, str, int, float, float]]:
    """Merge back-to-back records of one stage with the same op and mini-batch:
    (stage, op, batch, start, end) per run, for labelling."""
    runs: list[tuple[int, str, int, float, float]] = []
    for r in sorted(records, key=lambda r: (r["stage"], r["start_ms"])):
        if runs:
            stage, op, batch, lo, hi = runs[-1]
            if (stage, op, batch) == (r["stage"], r["op"], r["batch"]) and r[
                "start_ms"
            ] - hi < 1e-9 + 0.02 * (hi - lo):
                runs[-1] = (stage, op, batch, lo, r["end_ms"])
                continue
        runs.append((r["stage"], r["op"], r["batch"], r["start_ms"], r["end_ms"]))
    return runs


_LETTER = LETTERS


def _draw(ax: plt.Axes, records: Sequence[dict], title: str, x_max: float | None) -> None:
    shown = [r for r in records if r["op"] in STYLE]
    if not shown:
        ax.set_title(f"{title} (no records)")
        return
    start = min(r["start_ms"] for r in shown)
    end = max(r["end_ms"] for r in shown)
    stages = max(r["stage"] for r in shown) + 1
    for s in range(stages):
        ax.barh(s, end - start, left=0.0, height=0.8, color=IDLE_COLOUR, edgecolor="none")
    width_ms = x_max if x_max is not None else end - start
    for r in shown:
        _, even, odd = STYLE[r["op"]]
        colour = even if r["batch"] % 2 == 0 else odd
        ax.barh(
            r["stage"],
            r["end_ms"] - r["start_ms"],
            left=r["start_ms"] - start,
            height=0.8,
            color=colour,
        )
    # one label per run of the same op and mini-batch: op letter and mini-batch index
    for stage, op, batch, lo, hi in _runs(shown):
        if hi - lo > width_ms / 60:
            ax.text(
                (lo + hi) / 2 - start,
                stage,
                f"{_LETTER[op]}{batch}",
                ha="center",
                va="center",
                fontsize=7,
                color="white",
                fontweight="bold",
            )
    ax.set_yticks(range(stages))
    ax.set_yticklabels([f"stage {s}" for s in range(stages)])
    ax.invert_yaxis()
    ax.set_xlim(0, width_ms)
    ax.set_xlabel("time (ms)")
    ax.set_title(title)


def window(records: Sequence[dict], first_batch: int, last_batch: int) -> list[dict]:
    """Records clipped to the time from the end of mini-batch ``first_batch - 1`` (the start,
    for ``first_batch = 0``) to the end of ``last_batch``; batch ends are the latest ``OPT``
    end. Whatever runs in that time is kept, whichever mini-batch it belongs to."""
    ends: dict[int, float] = {}
    for r in records:
        if r["op"] == "OPT":
            ends[r["batch"]] = max(ends.get(r["batch"], float("-inf")), r["end_ms"])
    lo = ends.get(first_batch - 1, min(r["start_ms"] for r in records))
    hi = ends.get(last_batch, max(r["end_ms"] for r in records))
    clipped = []
    for r in records:
        if r["end_ms"] > lo and r["start_ms"] < hi:
            clipped.append(
                {
                    **r,
                    "start_ms": max(r["start_ms"], lo),
                    "end_ms": min(r["end_ms"], hi),
                }
            )
    return clipped


def plot_timelines(panels: Sequence[tuple[str, Sequence[dict]]], out: Path, share_x: bool = False) -> Path:
    """Draw one Gantt chart per ``(title, records)`` panel, stacked, into a PNG.

    Each run of one op of one mini-batch is labelled with the op's letter (T, F, B, L, O) and
    the mini-batch index; darker shades mark odd mini-batches; grey is idle time.

    Args:
        panels: ``(title, records)`` pairs; records are dicts with ``stage``, ``op``, ``batch``,
            ``microbatch``, ``start_ms``, ``end_ms`` (send/receive records are ignored).
        out: PNG path (parents created).
        share_x: use one time axis for all panels (to compare lengths directly).

    Returns:
        ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    heights = [max(1, max((r["stage"] for r in recs), default=0) + 1) for _, recs in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(13, 1.0 + sum(0.45 * h + 0.9 for h in heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    x_max = None
    if share_x:
        spans = []
        for _, recs in panels:
            shown = [r for r in recs if r["op"] in STYLE]
            if shown:
                spans.append(max(r["end_ms"] for r in shown) - min(r["start_ms"] for r in shown))
        x_max = max(spans) if spans else None
    for ax, (title, recs) in zip(axes[:, 0], panels):
        _draw(ax, recs, title, x_max)
    handles = [Patch(color=even, label=label) for label, even, _ in STYLE.values()]
    handles.append(Patch(color=IDLE_COLOUR, label="idle"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.timeline", description=__doc__)
    parser.add_argument("records", nargs="+", type=Path, help="timeline records (JSON lines)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    missing = [p for p in args.records if not p.exists()]
    if missing:
        print(f"error: {missing[0]} not found", file=sys.stderr)
        return 2
    plot_timelines([(p.stem, load_records(p)) for p in args.records], args.out, share_x=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
