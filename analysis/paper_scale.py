"""The report's paper-scale sections, from the simulated rows (``make simulate``): the
calibration's check against its own measured step, every schedule at its best configuration,
the linear model as an ablation, and the paper's published table row by row beside the same
models' simulated figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import rows as R
from analysis.compare import best_of, comparison_groups, subject_name
from analysis.tables import int_cell, markdown_table
from core.schedules import SCHEDULES, order_of, schedules

ROOT = Path(__file__).resolve().parent.parent
PAPER_DIR = ROOT / "experiments" / "paper"
PAPER_BASELINE = "mp"  # the paper's baseline, inter-layer model parallelism, is our mp
HEADLINE_STAGES = (8, 16)  # paper-scale headline: the paper's 8-GPU table, and 16 for its 12.15x


def _sim_frame(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    df = data.get("simulated", R.frame([]))
    if df.empty or "kind" not in df:
        return R.frame([])
    return df


def calibration_check_section(df: pd.DataFrame) -> str:
    """The calibration's consistency, per pair: the simulated one-device sequential step
    against the measured one, the per-kind scales and the sweep's extension."""
    checks = df[df["kind"] == "check"]
    if checks.empty:
        return ""
    lines = []
    for r in R.records(checks):
        scales = r.get("scales") or [None, None, None]
        lines.append(
            [
                r["calibration"].removesuffix(".json"),
                r["cost_model"],
                r["measured_step_ms"],
                r["step_ms"],
                100 * r["check_error"] if r.get("check_error") is not None else None,
                *scales,
                r.get("loss_ms"),
                r.get("fit_fixed_ms"),
                r.get("fit_per_sample_ms"),
                100 * r["fit_error_at_largest"] if r.get("fit_error_at_largest") is not None else None,
                r["_source"],
            ]
        )
    return (
        "### The calibration against its own measured step\n\n"
        "Per-block costs are timed one block at a time, each paying its own launch and sync, so their sum "
        "overstates a step. The realistic model interpolates the micro-batch sweep (beyond its largest size: the "
        "fixed + per-sample fit through its three largest sizes), then scales the teacher forward, student "
        "forward and student backward blocks so each kind adds up to the whole network the calibration timed at "
        "the full batch; what the measured sequential step spends beyond them (loss, optimiser) is charged to the "
        "loss. *check*: the simulated one-device sequential step (views x one view, as the calibration timed "
        "it) against the measured one.\n\n"
        + markdown_table(
            [
                "calibration",
                "cost model",
                "measured step ms",
                "simulated step ms",
                "check error %",
                "teacher scale",
                "student fwd scale",
                "student bwd scale",
                "loss + opt ms",
                "fit fixed ms",
                "fit ms / sample",
                "fit error at largest %",
                "row",
            ],
            lines,
        )
    )


def _best(block: pd.DataFrame) -> dict | None:
    return None if block.empty else R.records(block.sort_values("samples_per_s", ascending=False))[0]


def hybrid_table(rows: Sequence[dict]) -> str:
    """Per pair and GPU count of the ``kind: hybrid`` rows: ddp, the best single pipeline and the
    best dp x pp (realistic model, 450 GB/s), each with its peak memory per GPU."""
    df = R.frame(rows)
    if df.empty or "dp" not in df or not (df["kind"] == "hybrid").any():
        return "missing: no dp x pp rows; run `make simulate`.\n"
    df = df[(df["link"] == "nvlink") & (df["cost_model"] != "linear")]
    hybrid = df[df["kind"] == "hybrid"]
    sims = df[df["kind"] == "sim"]
    lines = []
    for (cal, gpus), block in hybrid.groupby(["calibration", "gpus"], sort=True):
        same = sims[(sims["calibration"] == cal) & (sims["stages"] == gpus)]
        ddp = _best(same[same["schedule"] == "ddp"])
        pipe = _best(same[same["schedule"] != "ddp"])
        top = _best(block)
        rival = max((r["samples_per_s"] for r in (ddp, pipe) if r), default=None)

        def cells(r: dict | None, name: str) -> list:
            return [
                name if r else None,
                r["samples_per_s"] if r else None,
                r.get("mem_lower_bound_gib") if r else None,
            ]

        lines.append(
            [
                cal.removesuffix(".json"),
                int_cell(gpus),
                *cells(ddp, "ddp"),
                *cells(pipe, f"{pipe['schedule']} M{int_cell(pipe['microbatches'])}" if pipe else ""),
                *cells(
                    top,
                    f"{int_cell(top['dp'])} x {top['schedule']} N{int_cell(top['stages'])} M{int_cell(top['microbatches'])}",
                ),
                top["samples_per_s"] / rival if rival else None,
            ]
        )
    headers = [
        "calibration",
        "GPUs",
        "ddp",
        "samples/s",
        "peak GiB",
        "best pipeline",
        "samples/s",
        "peak GiB",
    ]
    headers += ["best dp x pp", "samples/s", "peak GiB", "dp x pp / best other"]
    return markdown_table(headers, lines)


def simulated_section(data: dict[str, pd.DataFrame]) -> tuple[str, list[dict]]:
    """Paper scale from the H200 calibration: every schedule at its best configuration under the
    realistic model, the subject's speedups, and the linear ablation."""
    title = "## 2. Throughput at paper scale (simulated from the H200 calibration)\n"
    df = _sim_frame(data)
    if df.empty:
        return title + "\nmissing: no rows under `results/simulated/`; run `make simulate`.\n", []
    ref = subject_name()
    sims = df[df["kind"] == "sim"]
    realistic = sims[sims["cost_model"] != "linear"]
    groups = comparison_groups()
    lines, headline = [], []
    for (cal, link, stages), block in realistic.groupby(["calibration", "link", "stages"], sort=True):
        top = block[block["schedule"] == ref]
        if top.empty:
            continue
        ts = top.iloc[0].to_dict()
        cells = {label: best_of(block, members) for label, members in groups.items()}
        ratios = {
            label: ts["samples_per_s"] / other["samples_per_s"] if other else None
            for label, other in cells.items()
        }
        lines.append(
            [
                cal.removesuffix(".json"),
                f"{ts['link_gbps']:g} GB/s",
                stages,
                ts["cost_model"],
                ts["samples_per_s"],
                f"M={ts['microbatches']}, P={ts['backward_pieces']}",
                ts["efficiency"],
                *[ratios[label] for label in groups],
                *[
                    f"{o['schedule']} M={o['microbatches']}" if o else None
                    for label, o in cells.items()
                    if "/" in label
                ],
                ts["_source"],
            ]
        )
        if link == "nvlink" and stages in HEADLINE_STAGES:
            headline.append(
                {"calibration": cal, "stages": stages, "row": ts, "groups": cells, "ratios": ratios}
            )
    mixed = [label for label in groups if "/" in label]
    body = markdown_table(
        [
            "calibration",
            "link",
            "N",
            "cost model",
            f"{ref} samples/s",
            f"{ref} config",
            f"{ref} eff.",
            *[f"{ref} / {label}" for label in groups],
            *[f"best of {label}" for label in mixed],
            "row",
        ],
        lines,
    )
    linear = sims[sims["cost_model"] == "linear"]
    ablation = []
    for (cal, link, stages), block in linear.groupby(["calibration", "link", "stages"], sort=True):
        top = block[block["schedule"] == ref]
        if top.empty or link != "nvlink":
            continue
        ts = top.iloc[0].to_dict()
        others = (
            block[block["schedule"] != ref].assign(_o=lambda f: f["schedule"].map(order_of)).sort_values("_o")
        )
        family = block[block["schedule"].map(lambda n: n in SCHEDULES and SCHEDULES[n].accepts_lookahead)]
        ablation.append(
            [
                cal.removesuffix(".json"),
                stages,
                ts["efficiency"],
                ts.get("balance_cap"),
                family["efficiency"].max() / ts["balance_cap"] if ts.get("balance_cap") else None,
                *[ts["samples_per_s"] / o for o in others["samples_per_s"]],
            ]
        )
        ablation_headers = [f"{ref} / {s}" for s in others["schedule"]]
    text = (
        title + "\n**Simulated, not measured.** Reproduce: `make simulate` (details and Gantt charts in "
        "`results/simulated/TABLE.md`).\n\n"
        + calibration_check_section(df)
        + "\n### Each schedule at its best configuration (realistic model)\n\n"
        f"Every schedule at the micro-batch count (divisors of the batch up to 4N) and backward pieces (1 or 2) "
        f"that give it the most samples/s; ratios are {ref} at its best over the best of each kind; ddp is one "
        "replica per GPU with a ring all-reduce fully overlapped with the backward (its best case). A pair without "
        "a micro-batch sweep (`realistic, no sweep`) scales its per-block costs linearly, scaled to its measured "
        "networks.\n\n" + body
    )
    if "dp" in df and (df["kind"] == "hybrid").any():
        text += (
            "\n### Data-parallel replicas of a pipeline (dp x pp) at 8 and 16 GPUs (realistic model, 450 GB/s)\n\n"
            "dp replicas of a G / dp-stage pipeline, every schedule at its best per replica, beside ddp and the best "
            "single pipeline of the same G; each stage's optimizer step pays a ring all-reduce over dp of its "
            "gradients (not overlapped); peak GiB is the fullest GPU's lower bound (model in "
            "`results/simulated/TABLE.md`).\n\n"
            + hybrid_table(R.records(df[df["kind"].isin(["sim", "hybrid"])]))
        )
    if ablation:
        text += (
            "\n### The schedules alone (linear model, ablation)\n\n"
            "Per-block costs scaled linearly with the micro-batch (every size equally efficient), unscaled, M = N, "
            "2 backward pieces for every schedule that splits: what the schedules do with equal work, 450 GB/s. "
            "Not a prediction of any machine. *family / cap*: the most efficient of the tspipe family "
            f"({', '.join(s.name for s in schedules('pipeline') if s.accepts_lookahead)}) over the partition's "
            "balance cap (teacher forwards placed with a 300-simulation search up to 8 stages; a frozen teacher "
            "staggered).\n\n"
            + markdown_table(
                ["calibration", "N", f"{ref} eff.", "balance cap", "family / cap", *ablation_headers],
                ablation,
            )
        )
    return text, headline


def paper_section(data: dict[str, pd.DataFrame], paper_dir: Path = PAPER_DIR) -> str:
    """The paper's 8-GPU table row by row, beside the simulated figures for the same models at 8
    stages where a calibration of them exists (``not calibrated`` otherwise)."""
    table, mapping = paper_dir / "tspipe_throughput_8xV100.csv", paper_dir / "calibrations.csv"
    title = "## 3. The paper's table, row by row\n\n"
    if not table.exists():
        return title + f"missing: {table.relative_to(ROOT)}\n"
    paper = pd.read_csv(table)
    calibrated = (
        pd.read_csv(mapping)
        if mapping.exists()
        else pd.DataFrame(columns=["method", "teacher", "student", "calibration"])
    )
    paper = paper.merge(calibrated, on=["method", "teacher", "student"], how="left")
    df = _sim_frame(data)
    sims = (
        df[
            (df["kind"] == "sim")
            & (df["cost_model"] != "linear")
            & (df["link"] == "nvlink")
            & (df["stages"] == 8)
        ]
        if not df.empty
        else df
    )
    ref = subject_name()
    lines = []
    for p in paper.to_dict("records"):
        cal = p.get("calibration")
        block = (
            sims[sims["calibration"] == cal] if isinstance(cal, str) and not sims.empty else sims.iloc[0:0]
        )
        ts = block[block["schedule"] == ref]
        cells = [None, None, None, None]
        if not ts.empty:
            t = ts.iloc[0].to_dict()
            mp = best_of(block, [PAPER_BASELINE])
            gp = best_of(block, ["gpipe"])
            best = block.loc[block["samples_per_s"].astype(float).idxmax()].to_dict()
            cells = [
                t["samples_per_s"] / mp["samples_per_s"] if mp else None,
                t["samples_per_s"] / gp["samples_per_s"] if gp else None,
                f"{best['schedule']} ({best['samples_per_s']:,.0f}/s)",
                t["_source"],
            ]
        note = "not calibrated" if ts.empty else cal.removesuffix(".json")
        if not ts.empty and "no sweep" in str(ts.iloc[0]["cost_model"]):
            note += " (no sweep: upper bound)"
        lines.append(
            [
                p["method"],
                f"{p['teacher']} -> {p['student']}",
                p["mp_seq_per_s"],
                p["gpipe_seq_per_s"],
                p["tspipe_seq_per_s"],
                p["tspipe_over_mp"],
                p["tspipe_seq_per_s"] / p["gpipe_seq_per_s"],
                note,
                *cells,
            ]
        )
    return (
        title + "Lim et al. (ICML 2022), 8 V100 GPUs, sequences/s as printed on the authors' poster "
        "(`experiments/paper/`). Beside each row: our **simulated** H200 figures for the same models at 8 stages "
        "(realistic model, 450 GB/s, every schedule at its best configuration), where a calibration of those "
        "models exists; `not calibrated` where none does (no figure from another pair stands in). The paper's "
        "16-GPU 12.15x (MoCo-v3, ViT-Huge) has no per-model row; section 2 shows our 16-stage figures. A calibration without a micro-batch sweep "
        "(`no sweep`) charges small micro-batches nothing extra, so its ratios are upper bounds.\n\n"
        + markdown_table(
            [
                "method",
                "teacher -> student",
                "paper mp seq/s",
                "paper gpipe seq/s",
                "paper tspipe seq/s",
                "paper tspipe / mp",
                "paper tspipe / gpipe",
                "our calibration",
                f"sim. {ref} / mp",
                f"sim. {ref} / gpipe",
                "sim. best schedule",
                "row",
            ],
            lines,
        )
    )
