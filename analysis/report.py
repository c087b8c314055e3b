"""`make report`: ``results/REPORT.md`` and its PNGs, generated from the result rows only.

Every table row names the row it came from (``file#line``); sections whose rows are missing say
so and give the command that makes them; rows made by code that has changed since are flagged
stale. Rows are loaded into pandas DataFrames (``analysis.rows``, schema checked); best-of,
comparisons and ratios are pandas operations (``analysis.compare``). The README's "Results"
section includes the generated headline between the markers ``<!-- results:begin -->`` and
``<!-- results:end -->``.

Usage: ``python -m analysis.report [--results results] [--out results/REPORT.md] [--readme README.md]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import rows as R  # noqa: E402
from analysis.bench import colour  # noqa: E402
from analysis.compare import (  # noqa: E402
    ABLATION_LABELS,
    BASELINE_LABELS,
    STALE_LABELS,
    SYNC_LABELS,
    best_of,
    best_per_schedule,
    comparison_groups,
    gain_verdict,
    paired_difference,
    ratio,
    subject_name,
    verdict,
)
from analysis.fidelity import GOAL, error_summary, pipelined_rows, round_errors  # noqa: E402
from analysis.gpu import gpu_run_section  # noqa: E402
from analysis.hybrid import hybrid_section  # noqa: E402
from analysis.paper_scale import paper_section, simulated_section  # noqa: E402
from analysis.provenance import MICRO_CODE, code_paths, golden_digests, staleness  # noqa: E402
from analysis.replay import replay_frames, replay_section  # noqa: E402
from analysis.staleness import headline_pairs, staleness_section  # noqa: E402
from analysis.tables import markdown, markdown_table  # noqa: E402
from core.schedules import order_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
Expected = dict[str, tuple[str, str, str]]  # source -> (title, bench command, accuracy command)
SUBSOURCES = ("accuracy", "staleness", "hybrid")  # results/<folder>/<kind>/rows.jsonl


def load(results: Path, fallback: Path | None = None) -> dict[str, pd.DataFrame]:
    """Rows by source: ``<folder>`` for each ``results/<folder>/rows.jsonl`` (benchmarks and
    ``simulated``), ``<folder>/<kind>`` for each kind of :data:`SUBSOURCES` (accuracy, the
    staleness sweep, the measured dp x pp group), and ``gpu`` (rows measured on GPUs, from any
    ``*-cuda*`` folder). A source missing under ``results`` is read from ``fallback`` (a quick
    report re-measures some sources and reuses the rest)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    folders: set[str] = set()
    for base in (results, fallback) if fallback is not None else (results,):
        folders |= {p.parent.name for p in base.glob("*/rows.jsonl")}
        for kind in SUBSOURCES:
            folders |= {p.parent.parent.name for p in base.glob(f"*/{kind}/rows.jsonl")}
    for folder in sorted(folders - {"quick", "micro"}):
        key = "gpu" if "-cuda" in folder else folder
        subs = [("rows.jsonl", key), *((f"{kind}/rows.jsonl", f"{key}/{kind}") for kind in SUBSOURCES)]
        for sub, name in subs:
            for base in (results, fallback):
                if base is not None and (base / folder / sub).exists():
                    parts.setdefault(name, []).append(R.read(base / folder / sub, base))
                    break
    return {k: R.concat(v) for k, v in parts.items()}


def _first(df: pd.DataFrame, column: str, default: str) -> str:
    if column not in df:
        return default
    values = [v for v in df[column] if v]
    return str(values[0]) if values else default


# ---- sections ---------------------------------------------------------------------------------


def _bench_keys(data: dict[str, pd.DataFrame], expected: Expected | None = None) -> list[str]:
    """Sources of measured throughput rows (benchmarks), in folder order, and those expected."""
    found = {k for k in data if "/" not in k and k not in ("simulated", "gpu")}
    wanted = {k for k, (_, bench, _) in (expected or {}).items() if bench}
    return sorted(found | wanted)


def _spread(row: dict) -> str | None:
    low, high = row.get("samples_per_s_min"), row.get("samples_per_s_max")
    return f"{low:,.0f}-{high:,.0f}" if low is not None and high is not None else None


def throughput_section(
    data: dict[str, pd.DataFrame],
    expected: Expected | None = None,
    plots: Path | None = None,
    bases: Sequence[Path] = (),
) -> tuple[str, list[dict]]:
    """Measured CPU throughput of every method and schedule (each row with its rounds' range),
    and the headline comparisons: the subject at its best micro-batch count against every other
    kind of schedule at its own best. ``plots``: where the fidelity plot goes (none without);
    ``bases``: the result folders whose benches' ``replay.jsonl`` the fidelity section shows."""
    text = ["## 1. Throughput measured here (CPU, 2 stages)\n"]
    headline = []
    ref = subject_name()
    measured: dict[str, pd.DataFrame] = {}  # each bench's measured rows, for the fidelity table
    for key in _bench_keys(data, expected):
        df = data.get(key, R.frame([]))
        df = df[df["simulated"] != True] if not df.empty else df  # noqa: E712
        if key in data and not data[key].empty:
            measured[key] = df
        title, bench_cmd, _ = (expected or {}).get(key, (key, f"python -m experiments.bench {key}", ""))
        if df.empty:
            text.append(f"### {title}\n\nmissing: no rows under `results/{key}/`; run `{bench_cmd}`.\n")
            continue
        title = title if key in (expected or {}) else _first(df, "method_title", key)
        bench_cmd = _first(df, "command", bench_cmd)
        best = best_per_schedule(df)
        top = best[best["schedule"] == ref]
        top_row = top.iloc[0].to_dict() if not top.empty else None
        table = df.assign(_order=df["schedule"].map(order_of)).sort_values(["_order", "microbatches"])
        lines = []
        for r in R.records(table):
            pred = r.get("predicted_samples_per_s")
            error = r.get("prediction_error")
            lines.append(
                [
                    r["schedule"],
                    r["stages"],
                    r["microbatches"],
                    r["samples_per_s"],
                    _spread(r),
                    top_row["samples_per_s"] / r["samples_per_s"] if top_row else None,
                    r["efficiency"],
                    pred,
                    100 * error if error is not None and pred else None,  # as the fidelity table counts it
                    r["_source"],
                ]
            )
        first = df.iloc[0].to_dict()
        rounds = first.get("rounds")
        text.append(
            f"### {title}: {first['model']}, batch {first['global_batch']}, {first['device']}\n\n"
            f"Reproduce: `{bench_cmd}`. samples/s: the median over {rounds} interleaved rounds of each round's "
            f"median steady-state step (no warm-up, no last step); *range*: the slowest and fastest round. "
            f"*{ref} speedup*: {ref} at its best M over this row; *simulated*: the simulator's prediction from "
            "costs profiled in the same run (labelled simulated), the median of each round's; *sim. error %*: "
            "the median over the rounds of each round's prediction over its measurement, less 1 (what the "
            "fidelity table counts).\n\n"
            + markdown_table(
                [
                    "schedule",
                    "processes",
                    "M",
                    "samples/s",
                    "range",
                    f"{ref} speedup",
                    "efficiency",
                    "simulated samples/s",
                    "sim. error %",
                    "row",
                ],
                lines,
            )
        )
        if top_row is not None:
            entry = {"key": key, "title": title, "subject": top_row, "groups": {}}
            for label, members in comparison_groups().items():
                other = best_of(df, members)
                if other is not None:
                    entry["groups"][label] = other
            headline.append(entry)
    text.append(fidelity_section(measured, plots, bases))
    for key in sorted(k for k in data if k.endswith("/hybrid")):
        text.append(hybrid_section(data[key]))
    return "\n".join(text), headline


def fidelity_section(
    frames: dict[str, pd.DataFrame], plots: Path | None = None, bases: Sequence[Path] = ()
) -> str:
    """The simulator against every measured pipelined row above, per bench; with ``plots``,
    also a plot of every row's error and its rounds' range; with ``bases``, the replay of the
    benches' runs on their own compute kept in their ``replay.jsonl`` (:mod:`analysis.replay`)."""
    summary = error_summary(frames)
    if summary.empty:
        return ""
    replays, stale = replay_frames(list(frames), bases)
    png = plot_fidelity(frames, plots / "fidelity_errors.png", replays) if plots is not None else None
    figure = (
        f"\n![the simulator's error on every measured pipelined row]({png.name})\n\n"
        "Each point is a row's error (the median over its rounds), its bar the range of its rounds' own "
        f"errors, a cross (where the row carries it) its error at the run's speed, a black dash (where the "
        "bench keeps its runs) the replay error on the run's own compute (below); the band is the goal "
        f"(±{100 * GOAL:.0f} %).\n"
        if png is not None
        else ""
    )
    lines = [
        [
            r["bench"],
            f"{r['within']} of {r['rows']}",
            f"{r['in_rounds']} of {r['rows']}" if pd.notna(r["in_rounds"]) else None,
            100 * r["median"],
            100 * r["median_abs"],
            100 * r["worst"],
            r["worst_run"],
            100 * r["ddp"] if pd.notna(r["ddp"]) else None,
            f"{r['within_at_speed']} of {r['at_speed_rows']}" if r["at_speed_rows"] else None,
            100 * r["median_at_speed"] if pd.notna(r["median_at_speed"]) else None,
        ]
        for r in R.records(summary)
    ]
    return (
        "### Simulator fidelity on CPU\n\n"
        "Every measured pipelined row above (2 processes; action-list schedules and the torch peer) against "
        f"the simulator's prediction from costs profiled in the same run (goal: within {100 * GOAL:.0f} %); "
        "error = the median over a row's rounds of (simulated - measured) / measured, each round simulated "
        "from its own one-process runs; a positive median error is a simulator faster than the runs. "
        "*Inside the rounds*: predictions between the slowest and the fastest of the row's measured rounds, "
        "which the rounds' own spread cannot tell from a measurement. ddp is a model of one replica plus an "
        "all-reduce, not a schedule the simulator replays. *At the run's speed*: the same, with each round's "
        "prediction scaled by the machine's speed at its calibration over its speed at the run (a fixed piece "
        "of work timed on every process before and after every run; `experiments/drift.py`), where rows carry "
        "it: what remains once the shared machine's drift between a round's runs is taken out.\n\n"
        + markdown_table(
            [
                "bench",
                "within goal",
                "inside the rounds",
                "median error %",
                "median abs. error %",
                "largest error %",
                "at",
                "ddp error %",
                "within goal at the run's speed",
                "median error % at the run's speed",
            ],
            lines,
        )
        + figure
        + replay_section(replays, GOAL, stale)
    )


def plot_fidelity(
    frames: dict[str, pd.DataFrame], out: Path, replays: dict[str, pd.DataFrame] | None = None
) -> Path | None:
    """Every measured pipelined row's simulator error (%) per bench, one colour per schedule,
    with the range of its rounds' errors as a bar and the goal as a band; with ``replays``
    (:func:`analysis.replay.replay_frames`), each replayed run's replay error as a black dash."""
    benches = [(key, pipelined_rows(df)) for key, df in sorted(frames.items())]
    benches = [(key, rows) for key, rows in benches if not rows.empty]
    if not benches:
        return None
    schedules = sorted({s for _, rows in benches for s in rows["schedule"]}, key=order_of)
    colours = {s: colour(s) for s in schedules}  # the registry's, as in every other plot
    fig, ax = plt.subplots(figsize=(9, 5.0))
    ax.axhspan(-100 * GOAL, 100 * GOAL, color="green", alpha=0.08, label=f"goal ±{100 * GOAL:.0f} %")
    ax.axhline(0.0, color="black", linewidth=0.8)
    seen: set[str] = set()
    crossed = False  # a row marked at the run's speed
    dashed = False  # a row marked with its replay error
    for i, (key, rows) in enumerate(benches):
        replayed = (replays or {}).get(key, pd.DataFrame())
        replay = (
            {(r["schedule"], r["microbatches"]): r["replay_error"] for r in R.records(replayed)}
            if not replayed.empty
            else {}
        )
        rows = rows.assign(_o=rows["schedule"].map(order_of)).sort_values(["_o", "microbatches"])
        for j, r in enumerate(R.records(rows)):
            x = i - 0.4 + 0.8 * (j + 0.5) / len(rows)
            y = 100 * r["prediction_error"]
            errors = [100 * e for e in round_errors(r)] or [y]
            ax.errorbar(
                x,
                y,
                yerr=[[max(y - min(errors), 0.0)], [max(max(errors) - y, 0.0)]],
                fmt="o",
                markersize=4,
                capsize=2,
                color=colours[r["schedule"]],
                label=None if r["schedule"] in seen else r["schedule"],
            )
            seen.add(r["schedule"])
            at_speed = r.get("prediction_error_at_speed")
            if at_speed is not None and pd.notna(at_speed):
                ax.plot(
                    x,
                    100 * at_speed,
                    "x",
                    markersize=5,
                    color=colours[r["schedule"]],
                )
                crossed = True
            if (r["schedule"], r["microbatches"]) in replay:
                ax.plot(x, 100 * replay[(r["schedule"], r["microbatches"])], "_", markersize=7, color="black")
                dashed = True
    if crossed:  # one legend entry for the crosses, in no schedule's colour
        ax.plot([], [], "x", color="black", label="at the run's speed")
    if dashed:
        ax.plot([], [], "_", markersize=7, color="black", label="replayed on the run's compute")
    ax.set_xticks(range(len(benches)), [key for key, _ in benches], fontsize=8)
    ax.set_ylabel("simulated - measured, % of measured")
    ax.set_title("Simulator error per measured pipelined row, CPU, 2 processes (bar: rounds)")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def gpu_section(data: dict[str, pd.DataFrame], results: Path) -> str:
    df = data.get("gpu", R.frame([]))
    df = df[df["simulated"] != True] if not df.empty else df  # noqa: E712
    title = "## 4. GPU rows\n\n" + gpu_run_section(results / "gpu") + "\n"
    if df.empty:
        return (
            title
            + "No GPU benchmark rows yet: every throughput number above is from this project's CPU machines or "
            "simulated. The GPU benchmarks (`make bench-byol DEVICE=cuda ...`) write them when a GPU is available.\n"
        )
    shown = df[["method", "schedule", "stages", "microbatches", "samples_per_s", "device", "_source"]]
    return title + markdown(shown.rename(columns={"stages": "GPUs", "microbatches": "M", "_source": "row"}))


# per-run comparison rows (not runs) and the labels of each method's synchronous and tspipe runs
EXTRA_METRICS = ("teacher_drift_rel_l2", "max_abs_param_diff", "max_param_diff")


def paired_table(runs: pd.DataFrame, base: str, other: str) -> str:
    """The paired difference of two runs as a table (a line saying why not, when it cannot be);
    against a student trained without its teacher it says whether distillation gained."""
    d = paired_difference(runs, base, other)
    says = gain_verdict(d) if base in BASELINE_LABELS else verdict(d)
    if d is None:
        return f"Paired difference `{other}` - `{base}`: fewer than two common seeds.\n"
    return markdown_table(
        ["paired difference", "seeds", "mean", "std", "95 % interval (Student t)", "half-width", "supports"],
        [
            [
                f"{other} - {base}",
                d["seeds"],
                d["mean"],
                d["std"],
                f"[{d['low']:+.4f}, {d['high']:+.4f}]",
                (d["high"] - d["low"]) / 2,
                says,
            ]
        ],
        digits=4,
    )


def accuracy_section(
    data: dict[str, pd.DataFrame], results: Path, expected: Expected | None = None
) -> tuple[str, list[dict]]:
    text = ["## 5. Accuracy parity\n"]
    headline = []
    wanted = {f"{k}/accuracy" for k, (_, _, acc) in (expected or {}).items() if acc}
    for key in sorted({k for k in data if k.endswith("/accuracy")} | wanted):
        method = key.removesuffix("/accuracy")
        df = data.get(key, R.frame([]))
        title, _, acc_cmd = (expected or {}).get(
            method, (method, "", f"python -m experiments.accuracy {method}")
        )
        if df.empty:
            text.append(f"### {title}\n\nmissing: no rows under `results/{key}/`; run `{acc_cmd}`.\n")
            continue
        title = title if method in (expected or {}) else _first(df, "method_title", method)
        acc_cmd = _first(df, "command", acc_cmd)
        label = df["label"] if "label" in df else pd.Series(None, index=df.index)
        runs = df[label.notna() & df["metric_value"].notna() & ~df["metric"].isin(EXTRA_METRICS)]
        runs = runs.sort_values("seed", kind="stable")
        stats = []
        for name, group in runs.groupby("label", sort=False):
            values = group["metric_value"].astype(float)
            stats.append(
                [
                    name,
                    group["schedule"].iloc[0],
                    group["metric"].iloc[0],
                    len(values),
                    float(values.mean()),
                    float(values.std()) if len(values) > 1 else None,
                    ", ".join(f"{v:.4f}" for v in values),
                    ", ".join(group["_source"]),
                ]
            )
        extra = df[df["metric"].isin(EXTRA_METRICS)]
        body = markdown_table(
            ["run", "schedule", "metric", "seeds", "mean", "std", "per seed", "rows"], stats, digits=4
        )
        if not extra.empty:
            epoch = extra["epoch"] if "epoch" in extra else pd.Series(None, index=extra.index)
            body += "\n" + markdown_table(
                ["metric", "value", "epoch", "row"],
                [
                    [m, v, e, s]
                    for m, v, e, s in zip(extra["metric"], extra["metric_value"], epoch, extra["_source"])
                ],
                digits=6,
            )
        plots = sorted((results / method / "accuracy").glob("*_by_epoch.png"))
        link = "".join(
            f"; by-epoch plot: [{p.relative_to(results)}]({p.relative_to(results)})" for p in plots
        )
        means = runs.groupby("label", sort=False)["metric_value"].mean()
        sync = next((k for k in SYNC_LABELS if k in means.index), None)
        stale = next((k for k in STALE_LABELS if k in means.index), None)
        compared = [k for k in (stale, *ABLATION_LABELS) if k and sync and k in means.index]
        baseline = next((k for k in BASELINE_LABELS if k in means.index), None) if sync else None
        # a frozen teacher's tspipe student must equal the sequential one: the recorded largest
        # parameter differences, where every one is 0, say so for the seeds they cover
        diffs = extra[extra["metric"].isin(("max_abs_param_diff", "max_param_diff"))]
        stale_seeds = set(runs.loc[runs["label"] == stale, "seed"]) if stale else set()
        diffs = diffs[diffs["seed"].isin(stale_seeds)] if "seed" in diffs else diffs.iloc[:0]
        zero = len(diffs) and bool((diffs["metric_value"].astype(float) == 0).all())
        identical = int(diffs["seed"].nunique()) if zero else 0
        if sync and "init" in means.index:  # what training gained over each seed's initial weights
            body += "\n" + paired_table(runs, "init", sync)
        if baseline:  # what the teacher gained over the student trained without it
            body += "\n" + paired_table(runs, baseline, sync)
        for other in compared:
            if other == stale and identical and paired_difference(runs, sync, other) is None:
                body += (
                    f"\n`{other}` - `{sync}`: the students are bitwise identical (largest parameter "
                    f"difference 0 at {identical} seed(s)); an interval adds nothing to that.\n"
                )
                continue
            body += "\n" + paired_table(runs, sync, other)
        sweep = staleness_section(results / method / "staleness", f"{method}/staleness")
        if sweep:
            body += "\n" + sweep
        for pair in headline_pairs(results / method / "staleness"):
            headline.append({**pair, "title": title, "base": "L0", "sweep": True, "identical": 0})
        text.append(f"### {title}\n\nReproduce: `{acc_cmd}`{link}.\n\n" + body)
        for base, other in [*((sync, o) for o in compared), *([(baseline, sync)] if baseline else [])]:
            headline.append(
                {
                    "title": title,
                    "metric": runs["metric"].iloc[0],
                    "base": base,
                    "label": other,
                    "sync": float(means[base]),
                    "other": float(means[other]),
                    "paired": (d := paired_difference(runs, base, other)),
                    "gain": paired_difference(runs, "init", sync) if "init" in means.index else None,
                    "seeds": d["seeds"] if d else int((runs["label"] == other).sum()),
                    "identical": identical if other in STALE_LABELS else 0,
                }
            )
    return "\n".join(text), headline


def micro_section(results: Path, repo: Path) -> tuple[str, list[dict]]:
    """The engine's own costs (``make bench-micro``, pytest-benchmark), from its JSON, with the
    commit that made them and whether the code they time changed since (``MICRO_CODE``)."""
    path = results / "micro" / "benchmark.json"
    title = "## 6. The engine's own costs (micro-benchmarks)\n\n"
    if not path.exists():
        return title + "missing: no `results/micro/benchmark.json`; run `make bench-micro`.\n", []
    data = json.loads(path.read_text())
    bench = pd.DataFrame(
        [
            {
                "benchmark": b["name"],
                "group": b.get("group") or "",
                "median ms": b["stats"]["median"] * 1e3,
                "q1 ms": b["stats"]["q1"] * 1e3,
                "q3 ms": b["stats"]["q3"] * 1e3,
                "rounds": b["stats"]["rounds"],
            }
            for b in data["benchmarks"]
        ]
    )
    headline = []
    paired = [b for b in data["benchmarks"] if b["name"].startswith("test_engine_over_plain_loop")]
    if paired and {"plain_s", "engine_s", "steps"} <= set(paired[0].get("extra_info", {})):
        info = paired[0]["extra_info"]
        ratios = [e / p for e, p in zip(info["engine_s"], info["plain_s"])]
        headline.append(
            {
                "overhead": statistics.median(ratios) - 1,
                "low": min(ratios) - 1,
                "high": max(ratios) - 1,
                "rounds": len(ratios),
                "engine_ms": statistics.median(info["engine_s"]) / info["steps"] * 1e3,
                "plain_ms": statistics.median(info["plain_s"]) / info["steps"] * 1e3,
            }
        )
    machine = data.get("machine_info", {})
    sha = str((data.get("commit_info") or {}).get("id") or "None")[:12]
    # pytest-benchmark's own "dirty" flag counts the results written while benchmarking: not used
    state = staleness(pd.DataFrame({"git_sha": [sha]}), MICRO_CODE, repo)[sha]
    note = (
        f"Measured with `make bench-micro` ({machine.get('cpu', {}).get('brand_raw', 'cpu')}, "
        f"{data.get('datetime', '')[:10]}, git {sha}: {state}); medians and quartiles over "
        "pytest-benchmark's rounds.\n\n"
    )
    if headline:
        h = headline[0]
        note += (
            f"Engine overhead: the engine's one-stage `sequential` step takes {h['engine_ms']:.1f} ms (median "
            f"per step) against {h['plain_ms']:.1f} ms for a plain PyTorch loop on the same model and batch, "
            f"the two interleaved round by round: {100 * h['overhead']:+.1f}% (median of the "
            f"{h['rounds']} rounds' ratios; from {100 * h['low']:+.1f}% to {100 * h['high']:+.1f}%).\n\n"
        )
    return title + note + markdown(bench, digits=3), headline


def timeline_section(results: Path, data: dict[str, pd.DataFrame], expected: Expected | None = None) -> str:
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
        "## 7. Timelines\n\nMeasured Gantt charts (each beside the simulator's timeline for the same costs) "
        "of the schedules the registry marks, and simulated paper-scale ones:\n\n"
        + ("\n".join(links) if links else "none yet")
        + "\n"
    )


def environment_section(data: dict[str, pd.DataFrame], repo: Path) -> str:
    digests = golden_digests(repo / "tests" / "golden" / "fingerprints.json")
    lines = []
    for key, df in sorted(data.items()):
        states = staleness(df, code_paths(key, df), repo, digests)
        dates = sorted(str(d) for d in df["date"])
        devices = sorted({str(d) for d in df["device"]})
        for sha, state in states.items():
            lines.append(
                [
                    key,
                    int((df["git_sha"].map(str) == sha).sum()),
                    sha,
                    state,
                    ", ".join(sorted({str(t) for t in df["torch"]})),
                    f"{dates[0][:10]} .. {dates[-1][:10]}",
                    "; ".join(devices)[:80],
                ]
            )
    return (
        "## 8. Environment and freshness\n\nEach source's rows by the commit of the code that made them. A throughput row is "
        "*stale* when the code under its source's paths changed after it; an accuracy row that carries its method's "
        "numerics fingerprint is current while that fingerprint (`tests/golden/fingerprints.json`) is the "
        "method's digest both now and at the rows' own commit (a fingerprint stamped on rows made before it "
        "vouches for nothing).\n\n"
        + markdown_table(["source", "rows", "git sha", "state", "torch", "dates", "devices"], lines)
    )


def untrained(gain: dict | None) -> str:
    """A caveat for a comparison whose synchronous run does not beat its initial weights (the
    paired ``sync - init`` interval reaches 0 or below): parity there says little."""
    if gain is None or gain["low"] > 0:
        return ""
    return f"; but training did not beat the initial weights (sync - init {100 * gain['mean']:+.2f} points)"


def headline_snippet(
    throughput: list[dict], simulated: list[dict], accuracy: list[dict], micro: list[dict] | None = None
) -> str:
    """The short table the README includes."""
    ref = subject_name()
    lines = []
    for h in throughput:
        ts = h["subject"]
        for other in h["groups"].values():
            r = ratio(ts, other)
            lines.append(
                [
                    h["title"],
                    f"{ref} (M={ts['microbatches']}) over {other['schedule']} (M={other['microbatches']})",
                    "measured, CPU 2 stages, best M each",
                    r.text(),
                    f"results/{ts['_source']}",
                ]
            )
    for h in simulated:
        for label, other in h["groups"].items():
            if other is None:
                continue
            lines.append(
                [
                    h["calibration"].removesuffix(".json"),
                    f"{ref} over {other['schedule']}, {h['stages']} stages",
                    f"simulated H200, {h['row']['cost_model']}, best config each"
                    + (
                        " (smaller micro-batches modelled as free: an upper bound)"
                        if "no sweep" in str(h["row"]["cost_model"])
                        else ""
                    ),
                    f"{h['ratios'][label]:.3g}",
                    f"results/{h['row']['_source']}",
                ]
            )
    for h in accuracy:
        d, name = h["paired"], ref if h["label"] in STALE_LABELS else h["label"]
        base = h.get("base", "sync")
        value = f"{100 * (h['other'] - h['sync']):+.2f} points"
        if d is not None:
            value = f"{100 * d['mean']:+.2f} points [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        supports = verdict(d)
        if h.get("identical") and (d is None or h["identical"] >= d["seeds"]):
            value = "0 (bitwise)"
            supports = f"no loss: the students are bitwise identical ({h['identical']} seed(s) compared)"
        if base in BASELINE_LABELS:
            supports = gain_verdict(d)
            comparison = f"{h['metric']} distilled - {base} ({h['seeds']} seeds)"
        elif h.get("sweep"):  # the staleness sweep: tspipe at L = 1 (or the symmetric ablation) - L = 0
            what = (
                f"{ref} (L = 1)" if h["label"] == "L1" else "symmetric (L = 1, the student one step late too)"
            )
            comparison = f"{h['metric']} {what} - synchronous (L = 0), staleness sweep ({h['seeds']} seeds)"
        else:
            comparison = f"{h['metric']} {name} - synchronous ({h['seeds']} seeds)"
        lines.append(
            [
                h["title"],
                comparison,
                "measured, CPU; paired by seed, 95 % interval",
                value,
                supports + untrained(h.get("gain")),
            ]
        )
    for h in micro or []:
        lines.append(
            [
                "Engine",
                "one-stage sequential step over a plain PyTorch loop",
                "measured, CPU (make bench-micro)",
                f"{100 * h['overhead']:+.1f}% (rounds {100 * h['low']:+.1f}% to {100 * h['high']:+.1f}%)",
                "results/micro/benchmark.json",
            ]
        )
    if not lines:
        return "No results yet: run `make report`.\n"
    return markdown_table(["what", "comparison", "how", "value", "evidence"], lines)


def plot_speedups(throughput: list[dict], out: Path) -> Path | None:
    """Bar chart: the subject's measured speedup over the best of each kind, per method, with
    the range of its rounds as error bars."""
    if not throughput:
        return None
    labels = list(comparison_groups())
    fig, ax = plt.subplots(figsize=(9, 4.4))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for j, h in enumerate(throughput):
            if label in h["groups"]:
                r = ratio(h["subject"], h["groups"][label])
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ys.append(r.value)
                lo.append(r.value - (r.low if r.low is not None else r.value))
                hi.append((r.high if r.high is not None else r.value) - r.value)
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"over {label}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(throughput)), [h["title"] for h in throughput], fontsize=8)
    ax.set_ylabel(f"{subject_name()} speedup (measured)")
    ax.set_title(f"{subject_name()} at its best M over the best of each kind, CPU, 2 stages (range: rounds)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def build(
    results: Path,
    repo: Path = ROOT,
    fallback: Path | None = None,
    expected: Expected | None = None,
    plots: Path | None = None,
) -> tuple[str, str]:
    """The report's markdown and the README snippet, from the rows under ``results``.

    Args:
        expected: sources that should have rows (``make report`` passes every registered
            method's title and commands), so missing ones are named with the command that makes
            them.
        plots: where the report's own plot is written (default: ``results``).
    """
    data = load(results, fallback)
    bases = [b for b in (results, fallback) if b is not None]
    throughput, th_head = throughput_section(data, expected, plots or results, bases)
    simulated, sim_head = simulated_section(data)
    accuracy, acc_head = accuracy_section(data, results, expected)
    micro, micro_head = micro_section(
        results if (results / "micro").exists() or fallback is None else fallback, repo
    )
    speed_png = plot_speedups(th_head, (plots or results) / "report_speedups.png")
    snippet = headline_snippet(th_head, sim_head, acc_head, micro_head)
    parts = [
        "# TSPipe bench: report\n",
        "Generated by `make report` from the result rows under `results/` (nothing typed by hand; every "
        "table row names its source row as `file#line`). Simulated numbers are labelled simulated.\n",
        "## Headline\n\n" + snippet,
    ]
    if speed_png is not None:
        parts.append(f"![{subject_name()} speedups]({speed_png.name})\n")
    parts += [
        throughput,
        simulated,
        paper_section(data),
        gpu_section(data, results),
        accuracy,
        micro,
        timeline_section(results, data, expected),
        environment_section(data, repo),
    ]
    return "\n".join(parts), snippet


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
