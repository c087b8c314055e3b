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
from core.schedules import order_of, schedules, subject  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "fingerprints.json"
# code whose change makes a throughput source's rows stale (accuracy rows follow the method's
# numerics fingerprint instead, see ``staleness``)
_METHOD_CODE = ["core", "methods/common", "methods/spec.py", "methods/registry.py"]
SIMULATED_CODE = ["core", "experiments/simulate.py", "experiments/calibration"]
PAPER = {("moco_v3", 16): 12.15, ("soft_target", 8): 4.68}  # Lim et al. 2022, tspipe over mp
PAPER_BASELINE = "mp"  # the paper's baseline, inter-layer model parallelism, is our mp


def code_paths(key: str, rows: Sequence[dict]) -> list[str]:
    """The code a source's rows depend on: the engine, the method's folder and the driver."""
    if key == "simulated":
        return SIMULATED_CODE
    methods = sorted({str(r.get("method")) for r in rows})
    driver = [
        "training",
        "experiments/accuracy.py",
        "experiments/accuracy_kd.py",
        "experiments/accuracy_distilbert.py",
    ]
    if not key.endswith("/accuracy"):
        driver = ["experiments/bench.py"]
    return [*_METHOD_CODE, *(f"methods/{m}" for m in methods), *driver]


def golden_digests(path: Path = GOLDEN) -> dict[str, str]:
    """Each method's current numerics fingerprint (``tests/golden``), or {} without the file."""
    return json.loads(path.read_text())["methods"] if path.exists() else {}


def _subject() -> str:
    spec = subject()
    return spec.name if spec else ""


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
    """Rows by source: ``<folder>`` for each ``results/<folder>/rows.jsonl`` (benchmarks and
    ``simulated``), ``<folder>/accuracy``, and ``gpu`` (rows measured on GPUs, from any
    ``*-cuda*`` folder). A source missing under ``results`` is read from ``fallback`` (a quick
    report re-measures some sources and reuses the rest)."""
    out: dict[str, list[dict]] = {}

    def take(key: str, path: Path, base: Path) -> None:
        out.setdefault(key, []).extend(_read(path, base))

    folders = {p.parent.name for p in results.glob("*/rows.jsonl")}
    folders |= {p.parent.parent.name for p in results.glob("*/accuracy/rows.jsonl")}
    if fallback is not None:
        folders |= {p.parent.name for p in fallback.glob("*/rows.jsonl")}
        folders |= {p.parent.parent.name for p in fallback.glob("*/accuracy/rows.jsonl")}
    for folder in sorted(folders - {"quick"}):
        key = "gpu" if "-cuda" in folder else folder
        for sub, name in (("rows.jsonl", key), ("accuracy/rows.jsonl", f"{key}/accuracy")):
            path = results / folder / sub
            if path.exists():
                take(name, path, results)
            elif fallback is not None and (fallback / folder / sub).exists():
                take(name, fallback / folder / sub, fallback)
    return out


def _title(rows: Sequence[dict], key: str) -> str:
    return next((r["method_title"] for r in rows if r.get("method_title")), key)


def _command(rows: Sequence[dict], default: str) -> str:
    return next((r["command"] for r in rows if r.get("command")), default)


def _git(*args: str, repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def staleness(
    rows: Sequence[dict], paths: Sequence[str], repo: Path, digests: dict[str, str] | None = None
) -> dict[str, str]:
    """For each distinct ``git_sha`` of ``rows``: ``current``, ``stale`` (the code in ``paths``
    changed since), ``made from uncommitted code`` or ``unknown``. Rows that carry their
    method's numerics ``fingerprint`` (accuracy rows) are judged by it instead: ``current``
    while it equals the method's digest in ``digests``, ``stale: numerics changed`` otherwise."""
    out = {}
    for sha in sorted({str(r.get("git_sha")) for r in rows}):
        group = [r for r in rows if str(r.get("git_sha")) == sha]
        printed = [r for r in group if r.get("fingerprint")]
        if digests is not None and printed and len(printed) == len(group):
            changed = any(digests.get(str(r.get("method"))) != r["fingerprint"] for r in printed)
            out[sha] = "stale: numerics changed" if changed else "current (numerics fingerprint)"
            continue
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


def _subject_for(rows: Sequence[dict], row: dict) -> dict | None:
    ts = [r for r in rows if r["schedule"] == _subject()]
    same = [r for r in ts if r["microbatches"] == row["microbatches"]]
    return (same or ts or [None])[0]


Expected = dict[str, tuple[str, str, str]]  # source -> (title, bench command, accuracy command)


def _bench_keys(data: dict[str, list[dict]], expected: Expected | None = None) -> list[str]:
    """Sources of measured throughput rows (benchmarks), in folder order, and those expected."""
    found = {k for k in data if "/" not in k and k not in ("simulated", "gpu")}
    wanted = {k for k, (_, bench, _) in (expected or {}).items() if bench}
    return sorted(found | wanted)


def _baselines() -> list[str]:
    return [s.name for s in schedules() if s.baseline]


def throughput_section(
    data: dict[str, list[dict]], expected: Expected | None = None
) -> tuple[str, list[dict]]:
    """Measured CPU throughput of every method and schedule; returns markdown and headline rows."""
    text = ["## 1. Throughput measured here (CPU, 2 stages)\n"]
    headline = []
    ref = _subject()
    for key in _bench_keys(data, expected):
        rows = [r for r in data.get(key, []) if not r.get("simulated")]
        title, bench_cmd, _ = (expected or {}).get(key, (key, f"python -m experiments.bench {key}", ""))
        if not rows:
            text.append(f"### {title}\n\nmissing: no rows under `results/{key}/`; run `{bench_cmd}`.\n")
            continue
        title = title if key in (expected or {}) else _title(rows, key)
        bench_cmd = _command(rows, bench_cmd)
        lines = []
        for r in sorted(rows, key=lambda r: (order_of(r["schedule"]), r["microbatches"])):
            ts = _subject_for(rows, r)
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
            f"Reproduce: `{bench_cmd}`. *{ref} speedup* = {ref} samples/s / this row's (same M where measured); "
            "*simulated* = the simulator's prediction from costs profiled in the same run (labelled simulated).\n\n"
            + markdown_table(
                [
                    "schedule",
                    "processes",
                    "M",
                    "samples/s",
                    f"{ref} speedup",
                    "efficiency",
                    "simulated samples/s",
                    "sim. error %",
                    "row",
                ],
                lines,
            )
        )
        best = max((r for r in rows if r["schedule"] == ref), key=lambda r: r["samples_per_s"], default=None)
        if best is not None:
            entry = {"key": key, "title": title, "subject": best, "bases": {}}
            for base in _baselines():
                same = [
                    r
                    for r in rows
                    if r["schedule"] == base and r["microbatches"] in (best["microbatches"], 1)
                ]
                if same:
                    entry["bases"][base] = same[0]
            headline.append(entry)
    return "\n".join(text), headline


def simulated_section(data: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Paper scale from the H200 calibration: tspipe's simulated speedups at 4, 8, 16 stages."""
    rows = data.get("simulated", [])
    title = "## 2. Throughput at paper scale (simulated from the H200 calibration)\n"
    if not rows:
        return title + "\nmissing: no rows under `results/simulated/`; run `make simulate`.\n", []
    index = {(r["calibration"], r["link"], r["stages"], r["schedule"]): r for r in rows}
    ref = _subject()
    compared = sorted({r["schedule"] for r in rows} - {ref}, key=order_of)
    lines, headline = [], []
    for cal, link, stages in sorted(
        {(r["calibration"], r["link"], r["stages"]) for r in rows},
        key=lambda k: (k[0], k[1] != "nvlink", k[2]),
    ):
        ts = index.get((cal, link, stages, _subject()))
        if ts is None or stages < 4:
            continue
        ratio = {
            b: ts["samples_per_s"] / index[(cal, link, stages, b)]["samples_per_s"]
            for b in compared
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
                ratio.get(PAPER_BASELINE),
                paper,
                *[ratio.get(b) for b in compared if b != PAPER_BASELINE],
                ts.get("microbatch_penalty"),
                ts["_source"],
            ]
        )
        if link == "nvlink" and paper is not None and ts["cost_model"] == "linear":
            headline.append(
                {
                    "calibration": cal,
                    "stages": stages,
                    "simulated": ratio.get(PAPER_BASELINE),
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
                f"{ref} samples/s",
                "efficiency",
                "balance cap",
                f"{ref} / {PAPER_BASELINE}",
                f"paper / {PAPER_BASELINE}",
                *[f"{ref} / {b}" for b in compared if b != PAPER_BASELINE],
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


def accuracy_section(
    data: dict[str, list[dict]], results: Path, expected: Expected | None = None
) -> tuple[str, list[dict]]:
    text = ["## 4. Accuracy parity\n"]
    headline = []
    wanted = {f"{k}/accuracy" for k, (_, _, acc) in (expected or {}).items() if acc}
    for key in sorted({k for k in data if k.endswith("/accuracy")} | wanted):
        method = key.removesuffix("/accuracy")
        rows = data.get(key, [])
        title, _, acc_cmd = (expected or {}).get(
            method, (method, "", f"python -m experiments.accuracy {method}")
        )
        if not rows:
            text.append(f"### {title}\n\nmissing: no rows under `results/{key}/`; run `{acc_cmd}`.\n")
            continue
        title = title if method in (expected or {}) else _title(rows, method)
        acc_cmd = _command(rows, acc_cmd)
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


def timeline_section(results: Path, data: dict[str, list[dict]], expected: Expected | None = None) -> str:
    links = []
    for folder in _bench_keys(data, expected):
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
    digests = golden_digests(repo / "tests" / "golden" / "fingerprints.json")
    lines = []
    for key, rows in sorted(data.items()):
        states = staleness(rows, code_paths(key, rows), repo, digests)
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
        "## 6. Environment and freshness\n\nEach source's rows by the commit of the code that made them. A throughput row is "
        "*stale* when the code under its source's paths changed after it; an accuracy row that carries its method's "
        "numerics fingerprint is stale only when that fingerprint (`tests/golden/fingerprints.json`) changed.\n\n"
        + markdown_table(["source", "rows", "git sha", "state", "torch", "dates", "devices"], lines)
    )


def headline_snippet(throughput: list[dict], simulated: list[dict], accuracy: list[dict]) -> str:
    """The short table the README includes."""
    ref = _subject()
    lines = []
    for h in throughput:
        ts = h["subject"]
        for base, row in h["bases"].items():
            lines.append(
                [
                    h["title"],
                    f"{ref} over {base}",
                    "measured, CPU 2 stages",
                    ts["samples_per_s"] / row["samples_per_s"],
                    f"results/{ts['_source']}",
                ]
            )
    for h in simulated:
        lines.append(
            [
                h["calibration"].removesuffix(".json"),
                f"{ref} over {PAPER_BASELINE}, {h['stages']} stages",
                f"simulated (paper: {h['paper']}x)",
                h["simulated"],
                f"results/{h['row']['_source']}",
            ]
        )
    for h in accuracy:
        lines.append(
            [
                h["title"],
                f"{h['metric']} {ref} - synchronous ({h['seeds']} seeds)",
                "measured, CPU",
                100 * (h["tspipe"] - h["sync"]),
                "points",
            ]
        )
    if not lines:
        return "No results yet: run `make report`.\n"
    return markdown_table(["what", "comparison", "how", "value", "evidence"], lines)


def plot_speedups(throughput: list[dict], out: Path) -> Path | None:
    """Bar chart: the subject's measured speedup over each headline baseline, per method."""
    if not throughput:
        return None
    bases = _baselines()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(bases), 1)
    for i, base in enumerate(bases):
        xs, ys = [], []
        for j, h in enumerate(throughput):
            if base in h["bases"]:
                xs.append(j + (i - (len(bases) - 1) / 2) * width)
                ys.append(h["subject"]["samples_per_s"] / h["bases"][base]["samples_per_s"])
        bars = ax.bar(xs, ys, width, label=f"over {base}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(throughput)), [h["title"] for h in throughput], fontsize=8)
    ax.set_ylabel(f"{_subject()} speedup (measured)")
    ax.set_title(f"{_subject()}'s measured speedup, CPU, 2 stages")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def build(
    results: Path, repo: Path = ROOT, fallback: Path | None = None, expected: Expected | None = None
) -> tuple[str, str]:
    """The report's markdown and the README snippet, from the rows under ``results``.

    Args:
        expected: sources that should have rows (``make report`` passes every registered
            method's title and commands), so missing ones are named with the command that makes
            them.
    """
    data = load(results, fallback)
    throughput, th_head = throughput_section(data, expected)
    simulated, sim_head = simulated_section(data)
    accuracy, acc_head = accuracy_section(data, results, expected)
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
        timeline_section(results, data, expected),
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
