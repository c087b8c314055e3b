"""`make report`: ``results/REPORT.md`` and its PNGs, generated from the result rows only.

Every table row names the row it came from (``file#line``); sections whose rows are missing say
so and give the command that makes them; rows made by code that has changed since (by git sha)
are flagged stale. The README's "Results" section includes the generated headline snippet
between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->``.

Usage: ``python -m analysis.report [--results results] [--out results/REPORT.md] [--readme README.md]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.tables import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "byol": ("BYOL", "make bench-byol", "make accuracy-byol"),
    "moco_v3": ("MoCo-v3", "make bench-mocov3", "make accuracy-mocov3"),
    "soft_target": ("Soft-target KD", "make bench-kd", "make accuracy-kd"),
    "distilbert": ("DistilBERT", "make bench-distilbert", "make accuracy-distilbert"),
}
# code whose change makes a source's rows stale
_SHARED = ["core", "methods/common", "experiments/benchmark.py", "experiments/accuracy.py"]
CODE = {
    "engine": ["core", "experiments/benchmark.py", "experiments/bench_engine.py"],
    "simulated": ["core", "experiments/simulate.py", "experiments/calibration"],
    "byol": [
        *_SHARED,
        "methods/byol",
        "experiments/byol.py",
        "experiments/bench_byol.py",
        "experiments/accuracy_byol.py",
    ],
    "moco_v3": [
        *_SHARED,
        "methods/moco_v3",
        "experiments/moco_v3.py",
        "experiments/bench_mocov3.py",
        "experiments/accuracy_mocov3.py",
    ],
    "soft_target": [
        *_SHARED,
        "methods/soft_target",
        "experiments/soft_target.py",
        "experiments/bench_kd.py",
        "experiments/accuracy_kd.py",
    ],
    "distilbert": [
        *_SHARED,
        "methods/distilbert",
        "experiments/distilbert.py",
        "experiments/bench_distilbert.py",
        "experiments/accuracy_distilbert.py",
    ],
}
PAPER = {("moco_v3", 16): 12.15, ("soft_target", 8): 4.68}  # Lim et al. 2022, tspipe over mp


def _read(path: Path, results: Path) -> list[dict]:
    rows = []
    rel = path.relative_to(results).as_posix()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            row["_source"] = f"{rel}#{number}"
            rows.append(row)
    return rows


def load(results: Path, fallback: Path | None = None) -> dict[str, list[dict]]:
    """Rows by source: ``engine``, ``<method>`` (bench), ``<method>/accuracy``, ``simulated``,
    ``gpu`` (rows measured on GPUs, from any bench folder). A source missing under ``results``
    is read from ``fallback`` (a quick report re-measures some sources and reuses the rest)."""
    out: dict[str, list[dict]] = {}

    def take(key: str, path: Path) -> None:
        if path.exists():
            out.setdefault(key, []).extend(_read(path, results))
        elif fallback is not None:
            other = fallback / path.relative_to(results)
            if other.exists():
                out.setdefault(key, []).extend(_read(other, fallback))

    take("engine", results / "engine" / "rows.jsonl")
    take("simulated", results / "simulated" / "rows.jsonl")
    for method in METHODS:
        take(method, results / method / "rows.jsonl")
        take(f"{method}/accuracy", results / method / "accuracy" / "rows.jsonl")
    for path in sorted(results.glob("*-cuda*/rows.jsonl")):
        take("gpu", path)
    return out


def _git(*args: str, repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def staleness(rows: Sequence[dict], paths: Sequence[str], repo: Path) -> dict[str, str]:
    """For each distinct ``git_sha`` of ``rows``: ``current``, ``stale`` (the code in ``paths``
    changed since), ``made from uncommitted code`` or ``unknown``."""
    out = {}
    for sha in sorted({str(r.get("git_sha")) for r in rows}):
        base = sha.removesuffix("+dirty")
        if sha == "None" or _git("cat-file", "-e", f"{base}^{{commit}}", repo=repo).returncode != 0:
            out[sha] = "unknown commit"
            continue
        changed = _git("diff", "--quiet", base, "HEAD", "--", *paths, repo=repo).returncode != 0
        if changed:
            out[sha] = "stale: code changed since"
        elif sha.endswith("+dirty"):
            out[sha] = "made from uncommitted code"
        else:
            out[sha] = "current"
    return out


# ---- sections ---------------------------------------------------------------------------------


def _tspipe_for(rows: Sequence[dict], row: dict) -> dict | None:
    ts = [r for r in rows if r["schedule"] == "tspipe"]
    same = [r for r in ts if r["microbatches"] == row["microbatches"]]
    return (same or ts or [None])[0]


def throughput_section(data: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Measured CPU throughput of every method and schedule; returns markdown and headline rows."""
    text = ["## 1. Throughput measured here (CPU, 2 stages)\n"]
    headline = []
    for key, (title, bench_cmd, _) in [
        ("engine", ("Engine (synthetic CNN pair)", "make bench-engine", "")),
        *METHODS.items(),
    ]:
        rows = [r for r in data.get(key, []) if not r.get("simulated")]
        if not rows:
            text.append(f"### {title}\n\nmissing: no rows under `results/{key}/`; run `{bench_cmd}`.\n")
            continue
        lines = []
        for r in sorted(rows, key=lambda r: (_order(r["schedule"]), r["microbatches"])):
            ts = _tspipe_for(rows, r)
            pred = r.get("predicted_samples_per_s")
            lines.append(
                [
                    r["schedule"],
                    r["stages"],
                    r["microbatches"],
                    r["samples_per_s"],
                    ts["samples_per_s"] / r["samples_per_s"] if ts else None,
                    r["efficiency"],
                    pred,
                    100 * (pred - r["samples_per_s"]) / r["samples_per_s"] if pred else None,
                    r["_source"],
                ]
            )
        first = rows[0]
        text.append(
            f"### {title}: {first['model']}, batch {first['global_batch']}, {first['device']}\n\n"
            f"Reproduce: `{bench_cmd}`. *tspipe speedup* = tspipe samples/s / this row's (same M where measured); "
            "*simulated* = the simulator's prediction from costs profiled in the same run (labelled simulated).\n\n"
            + markdown_table(
                [
                    "schedule",
                    "processes",
                    "M",
                    "samples/s",
                    "tspipe speedup",
                    "efficiency",
                    "simulated samples/s",
                    "sim. error %",
                    "row",
                ],
                lines,
            )
        )
        best = max(
            (r for r in rows if r["schedule"] == "tspipe"), key=lambda r: r["samples_per_s"], default=None
        )
        if best is not None:
            entry = {"key": key, "title": title, "tspipe": best}
            for base in ("gpipe", "mp", "torch-gpipe"):
                same = [
                    r
                    for r in rows
                    if r["schedule"] == base and r["microbatches"] in (best["microbatches"], 1)
                ]
                if same:
                    entry[base] = same[0]
            headline.append(entry)
    return "\n".join(text), headline


def _order(schedule: str) -> int:
    order = ("sequential", "mp", "gpipe", "1f1b", "tspipe", "ddp", "torch-gpipe", "torch-1f1b")
    return order.index(schedule) if schedule in order else 99


def simulated_section(data: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Paper scale from the H200 calibration: tspipe's simulated speedups at 4, 8, 16 stages."""
    rows = data.get("simulated", [])
    title = "## 2. Throughput at paper scale (simulated from the H200 calibration)\n"
    if not rows:
        return title + "\nmissing: no rows under `results/simulated/`; run `make simulate`.\n", []
    index = {(r["calibration"], r["link"], r["stages"], r["schedule"]): r for r in rows}
    lines, headline = [], []
    for cal, link, stages in sorted(
        {(r["calibration"], r["link"], r["stages"]) for r in rows},
        key=lambda k: (k[0], k[1] != "nvlink", k[2]),
    ):
        ts = index.get((cal, link, stages, "tspipe"))
        if ts is None or stages < 4:
            continue
        ratio = {
            b: ts["samples_per_s"] / index[(cal, link, stages, b)]["samples_per_s"]
            for b in ("mp", "gpipe", "1f1b", "ddp")
            if (cal, link, stages, b) in index
        }
        paper = PAPER.get((ts["method"], stages))
        lines.append(
            [
                cal.removesuffix(".json"),
                f"{ts['link_gbps']:g} GB/s",
                stages,
                ts["samples_per_s"],
                ts["efficiency"],
                ts.get("balance_cap"),
                ratio.get("mp"),
                paper,
                ratio.get("gpipe"),
                ratio.get("1f1b"),
                ratio.get("ddp"),
                ts.get("microbatch_penalty"),
                ts["_source"],
            ]
        )
        if link == "nvlink" and paper is not None and ts["cost_model"] == "linear":
            headline.append(
                {
                    "calibration": cal,
                    "stages": stages,
                    "simulated": ratio.get("mp"),
                    "paper": paper,
                    "row": ts,
                }
            )
    text = (
        title + "\n**Simulated, not measured.** Reproduce: `make simulate` (details and Gantt charts in "
        "`results/simulated/TABLE.md`). M = N micro-batches (each SSL view its own unit), tspipe splits each "
        "backward in 2; ddp is modelled as whole-model replicas with a ring all-reduce fully overlapped with the "
        "backward. *paper* is the speedup over mp measured by Lim et al. (ICML 2022) on GPUs: MoCo-v3 with ViTs on "
        "16 GPUs and KD (ViT-L/16 teacher) on 8. `mbsweep` rows use measured micro-batch sweeps (the penalty "
        "column: work per sample at the micro-batch size over the full batch).\n\n"
        + markdown_table(
            [
                "calibration",
                "link",
                "N",
                "tspipe samples/s",
                "efficiency",
                "balance cap",
                "tspipe / mp",
                "paper / mp",
                "tspipe / gpipe",
                "tspipe / 1f1b",
                "tspipe / ddp",
                "M-batch penalty",
                "row",
            ],
            lines,
        )
    )
    return text, headline


def gpu_section(data: dict[str, list[dict]]) -> str:
    rows = [r for r in data.get("gpu", []) if not r.get("simulated")]
    title = "## 3. GPU rows\n\n"
    if not rows:
        return (
            title
            + "No GPU rows yet: every throughput number above is from this project's CPU machines or simulated. The GPU checks (`make bench-byol DEVICE=cuda ...`) write them when a GPU is available.\n"
        )
    lines = [
        [
            r["method"],
            r["schedule"],
            r["stages"],
            r["microbatches"],
            r["samples_per_s"],
            r["device"],
            r["_source"],
        ]
        for r in rows
    ]
    return title + markdown_table(["method", "schedule", "GPUs", "M", "samples/s", "card", "row"], lines)


# per-run comparison rows (not runs) and the labels of each method's synchronous and tspipe runs
EXTRA_METRICS = ("teacher_drift_rel_l2", "max_abs_param_diff", "max_param_diff")
SYNC_LABELS = ("sync", "kd-sequential", "distil-sequential", "sequential")
STALE_LABELS = ("tspipe", "kd-tspipe", "distil-tspipe")


def accuracy_section(data: dict[str, list[dict]], results: Path) -> tuple[str, list[dict]]:
    text = ["## 4. Accuracy parity\n"]
    headline = []
    for method, (title, _, acc_cmd) in METHODS.items():
        rows = data.get(f"{method}/accuracy", [])
        if not rows:
            text.append(
                f"### {title}\n\nmissing: no rows under `results/{method}/accuracy/`; run `{acc_cmd}`.\n"
            )
            continue
        runs = [
            r
            for r in rows
            if r.get("label") and r.get("metric_value") is not None and r.get("metric") not in EXTRA_METRICS
        ]
        groups: dict[str, list[dict]] = {}
        for r in runs:
            groups.setdefault(r["label"], []).append(r)
        lines = []
        for label, group in groups.items():
            group.sort(key=lambda r: r["seed"])
            values = [r["metric_value"] for r in group]
            lines.append(
                [
                    label,
                    group[0]["schedule"],
                    group[0]["metric"],
                    len(values),
                    statistics.fmean(values),
                    statistics.stdev(values) if len(values) > 1 else None,
                    ", ".join(f"{v:.4f}" for v in values),
                    ", ".join(r["_source"] for r in group),
                ]
            )
        extra = [r for r in rows if r.get("metric") in EXTRA_METRICS]
        body = markdown_table(
            ["run", "schedule", "metric", "seeds", "mean", "std", "per seed", "rows"], lines, digits=4
        )
        if extra:
            body += "\n" + markdown_table(
                ["metric", "value", "epoch", "row"],
                [[r["metric"], r["metric_value"], r.get("epoch"), r["_source"]] for r in extra],
                digits=6,
            )
        plots = sorted((results / method / "accuracy").glob("*_by_epoch.png"))
        link = "".join(
            f"; by-epoch plot: [{p.relative_to(results)}]({p.relative_to(results)})" for p in plots
        )
        text.append(f"### {title}\n\nReproduce: `{acc_cmd}`{link}.\n\n" + body)
        sync = next((groups[k] for k in SYNC_LABELS if k in groups), None)
        stale = next((groups[k] for k in STALE_LABELS if k in groups), None)
        if sync and stale:
            headline.append(
                {
                    "title": title,
                    "metric": sync[0]["metric"],
                    "sync": statistics.fmean(r["metric_value"] for r in sync),
                    "tspipe": statistics.fmean(r["metric_value"] for r in stale),
                    "seeds": len(stale),
                }
            )
    return "\n".join(text), headline


def timeline_section(results: Path) -> str:
    links = []
    for folder in ("engine", *METHODS):
        for png in sorted((results / folder).glob("gantt_*.png")):
            links.append(f"- [{png.relative_to(results).as_posix()}]({png.relative_to(results).as_posix()})")
    sim = sorted((results / "simulated").glob("gantt_*.png"))
    links += [
        f"- [{p.relative_to(results).as_posix()}]({p.relative_to(results).as_posix()}) (simulated)"
        for p in sim
    ]
    return (
        "## 5. Timelines\n\nMeasured Gantt charts (each beside the simulator's timeline for the same costs) "
        "of gpipe and tspipe, and simulated paper-scale ones:\n\n"
        + ("\n".join(links) if links else "none yet")
        + "\n"
    )


def environment_section(data: dict[str, list[dict]], repo: Path) -> str:
    lines = []
    for key, rows in sorted(data.items()):
        paths = CODE.get(key.split("/")[0] if key != "gpu" else "engine", ["core"])
        states = staleness(rows, paths, repo)
        dates = sorted(str(r.get("date")) for r in rows)
        devices = sorted({str(r.get("device")) for r in rows})
        for sha, state in states.items():
            count = sum(1 for r in rows if str(r.get("git_sha")) == sha)
            lines.append(
                [
                    key,
                    count,
                    sha,
                    state,
                    ", ".join(sorted({str(r.get("torch")) for r in rows})),
                    f"{dates[0][:10]} .. {dates[-1][:10]}",
                    "; ".join(devices)[:80],
                ]
            )
    return (
        "## 6. Environment and freshness\n\nEach source's rows by the commit of the code that made them; *stale* means the code under that source's paths changed after it.\n\n"
        + markdown_table(["source", "rows", "git sha", "state", "torch", "dates", "devices"], lines)
    )


def headline_snippet(throughput: list[dict], simulated: list[dict], accuracy: list[dict]) -> str:
    """The short table the README includes."""
    lines = []
    for h in throughput:
        ts = h["tspipe"]
        for base in ("gpipe", "torch-gpipe", "mp"):
            if base in h:
                lines.append(
                    [
                        h["title"],
                        f"tspipe over {base}",
                        "measured, CPU 2 stages",
                        ts["samples_per_s"] / h[base]["samples_per_s"],
                        f"results/{ts['_source']}",
                    ]
                )
    for h in simulated:
        lines.append(
            [
                h["calibration"].removesuffix(".json"),
                f"tspipe over mp, {h['stages']} stages",
                f"simulated (paper: {h['paper']}x)",
                h["simulated"],
                f"results/{h['row']['_source']}",
            ]
        )
    for h in accuracy:
        lines.append(
            [
                h["title"],
                f"{h['metric']} tspipe - synchronous ({h['seeds']} seeds)",
                "measured, CPU",
                100 * (h["tspipe"] - h["sync"]),
                "points",
            ]
        )
    if not lines:
        return "No results yet: run `make report`.\n"
    return markdown_table(["what", "comparison", "how", "value", "evidence"], lines)


def plot_speedups(throughput: list[dict], out: Path) -> Path | None:
    """Bar chart: tspipe's measured speedup over gpipe, the torch peer and mp per method."""
    if not throughput:
        return None
    bases = ("gpipe", "torch-gpipe", "mp")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.25
    for i, base in enumerate(bases):
        xs, ys = [], []
        for j, h in enumerate(throughput):
            if base in h:
                xs.append(j + (i - 1) * width)
                ys.append(h["tspipe"]["samples_per_s"] / h[base]["samples_per_s"])
        bars = ax.bar(xs, ys, width, label=f"over {base}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(throughput)), [h["title"] for h in throughput], fontsize=8)
    ax.set_ylabel("tspipe speedup (measured)")
    ax.set_title("tspipe's measured speedup, CPU, 2 stages")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def build(results: Path, repo: Path = ROOT, fallback: Path | None = None) -> tuple[str, str]:
    """The report's markdown and the README snippet, from the rows under ``results``."""
    data = load(results, fallback)
    throughput, th_head = throughput_section(data)
    simulated, sim_head = simulated_section(data)
    accuracy, acc_head = accuracy_section(data, results)
    speed_png = plot_speedups(th_head, results / "report_speedups.png")
    parts = [
        "# TSPipe bench: report\n",
        "Generated by `make report` from the result rows under `results/` (nothing typed by hand; every "
        "table row names its source row as `file#line`). Simulated numbers are labelled simulated.\n",
        "## Headline\n\n" + headline_snippet(th_head, sim_head, acc_head),
    ]
    if speed_png is not None:
        parts.append(f"![tspipe speedups]({speed_png.name})\n")
    parts += [
        throughput,
        simulated,
        gpu_section(data),
        accuracy,
        timeline_section(results),
        environment_section(data, repo),
    ]
    return "\n".join(parts), headline_snippet(th_head, sim_head, acc_head)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(readme: Path, snippet: str) -> bool:
    """Replace the text between the results markers of the README; True if it changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{snippet}{END}{tail}"
    if new != text:
        readme.write_text(new)
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/REPORT.md")
    parser.add_argument(
        "--readme", type=Path, default=None, help="README to update between the results markers"
    )
    parser.add_argument("--fallback", type=Path, default=None, help="rows folder for sources --results lacks")
    args = parser.parse_args(argv)
    report, snippet = build(args.results, ROOT, args.fallback)
    out = args.out or args.results / "REPORT.md"
    out.write_text(report)
    if args.readme is not None:
        update_readme(args.readme, snippet)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
