"""The report's account of the prepared GPU run (``make gpu-check``, ``results/gpu/``): what ran
in its time box, engine overhead per method, the short training run, and the pairs it
calibrated; or that the run is still owed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.tables import markdown


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gpu_run_section(folder: Path) -> str:
    """Markdown for the GPU run under ``folder`` (its ``log.json`` and what its parts wrote)."""
    log_path = folder / "log.json"
    if not log_path.exists():
        return (
            "The prepared GPU run (`make gpu-check`: engine overhead, a short training run, the paper's "
            "configurations calibrated) has not run on a GPU yet: it is owed.\n"
        )
    log = json.loads(log_path.read_text())
    rel = folder.parent.name + "/" + folder.name
    out = [
        f"The prepared GPU run (`make gpu-check`) on {log['device']}, torch {log['torch']}: "
        f"{log['wall_s']:.0f} s of a {log['budget_s']:.0f} s time box (`{rel}/log.json`).\n",
        markdown(
            pd.DataFrame(log["parts"]).rename(columns={"wall_s": "wall s", "estimate_s": "estimate s"}),
            digits=1,
        ),
    ]
    overhead = sorted(folder.glob("overhead/*/rows.jsonl"))
    if overhead:
        rows = pd.DataFrame([r for p in overhead for r in _rows(p)])
        table = rows.pivot_table(index="method", columns="runner", values="step_ms", aggfunc="first")
        table["engine overhead %"] = 100 * (table["engine-sequential"] / table["plain-loop"] - 1)
        out.append(
            "Engine overhead: the engine's one-stage `sequential` step against a plain PyTorch loop, "
            "median ms per step after warm-up.\n\n" + markdown(table.reset_index(), digits=2)
        )
    train = folder / "train" / "rows.jsonl"
    if train.exists():
        r = _rows(train)[0]
        out.append(
            f"Training: {r['model']}, {r['steps']} steps of {r['global_batch']} on one stage "
            f"(bf16: {r['amp_bf16']}): loss {r['loss_first_quarter']:.4f} over the first quarter of the steps, "
            f"{r['loss_last_quarter']:.4f} over the last ({'down' if r['loss_went_down'] else 'NOT down'}).\n"
        )
    errors = folder / "multiproc" / "errors.jsonl"
    if errors.exists():
        rows = pd.DataFrame(_rows(errors))
        out.append(
            "Several processes on the one GPU over the host-staged transport, against the same "
            "schedule on one process after 3 steps (relative error of the whole student and "
            "teacher; timings in this mode are not pipeline throughput).\n\n"
            + markdown(
                rows[
                    [
                        "processes",
                        "schedule",
                        "dtype",
                        "student_rel_err",
                        "teacher_rel_err",
                        "tolerance",
                        "within",
                    ]
                ].assign(
                    **{
                        c: rows[c].map(lambda v: f"{v:.1e}")
                        for c in ("student_rel_err", "teacher_rel_err", "tolerance")
                    }
                )
            )
        )
    # the base calibration files (not the sweeps, not the summary, which may not have come back)
    files = sorted(
        f for f in folder.glob("calibration/*.json") if f.name != "summary.json" and "_mbsweep_" not in f.name
    )
    if files:
        cal = pd.DataFrame([json.loads(f.read_text()) for f in files])
        cal["sweep file"] = [
            (f.parent / f.name.replace("_bf16", "_mbsweep_bf16").replace("_fp32", "_mbsweep_fp32")).exists()
            for f in files
        ]
        shown = cal[
            [
                "pair",
                "batch",
                "amp_bf16",
                "seq_step_ms",
                "seq_samples_per_s",
                "peak_mem_GiB",
                "wall_s",
                "sweep file",
            ]
        ]
        out.append(
            "Calibrated pairs (per view for SSL pairs; files under `"
            + rel
            + "/calibration/`).\n\n"
            + markdown(shown, digits=2)
        )
    calibrated = [r for r in log.get("results", {}).get("calibrate", []) if r]
    missing = [r for r in calibrated if not (folder / "calibration" / r["file"]).exists()]
    if missing:
        out.append(
            "Pairs the run calibrated whose files did not come back from the GPU machine (their "
            "sequential step, per view for SSL pairs, from `log.json`).\n\n"
            + markdown(pd.DataFrame(missing)[["file", "seq_step_ms", "wall_s"]], digits=2)
        )
    earlier = folder / "first-run"
    if (earlier / "log.json").exists():
        out.append("### The first run\n\n" + gpu_run_section(earlier))
    return "\n".join(out)
