"""`make accuracy-distilbert`: does distillation beat the masked-LM loss alone, and does tspipe
change it? Held-out masked-token accuracy and perplexity, CPU.

Every run uses the ``accuracy`` preset (``methods/distilbert/presets.py``: the fine-tuned MiniLM
teacher, 6 x 384, into a 3-layer student that starts from every other teacher layer; Shakespeare
+ KJV in 128-token blocks, batch 16, 2 micro-batches, one backward piece, 300 steps) and is
evaluated on the same 512 held-out blocks with the same masks. Per seed (``--seeds``):

* ``distil-sequential``: DistilBERT's three losses (soft targets, masked-LM, cosine), one process;
* ``mlm-only``: the same student trained with the masked-LM loss alone (``alpha_ce = alpha_cos =
  0``), the baseline distillation must beat;
* ``distil-tspipe`` (first seed only): the distillation run on 2 pipeline stages. The teacher is
  frozen, so tspipe has no staleness and must train the same student bit for bit: the largest
  parameter difference from the sequential run is a row (``metric = max_param_diff``). A
  deterministic equality needs no second seed, and each tspipe run takes both cores.

Rows go to ``OUT/rows.jsonl``: one per run (``metric_value`` the masked-token accuracy,
``mlm_ppl`` the perplexity), the parameter difference, and the teacher's own held-out metrics
from ``teacher.json``. Each row records the teacher file's SHA-256 (``teacher_sha``): a matrix
made with another teacher is run again from scratch, since the config cannot tell two teachers
apart. ``OUT/TABLE.md`` is generated from the rows (``--report-only`` redoes only that).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.compare import paired_difference
from analysis.tables import markdown_table
from core.metrics import make_row, read_rows, write_rows
from core.overrides import apply_overrides
from experiments.accuracy import (
    ROOT,
    AccuracyRun,
    existing_rows,
    file_sha,
    final_student,
    forget_other_teacher,
    parameter_difference,
    provenance,
    run_matrix,
)
from methods.distilbert import METHOD
from methods.distilbert.model import teacher_metrics

PRESET = "accuracy"
SEEDS = (0, 1, 2)
BASE, DISTIL, PARALLEL = "mlm-only", "distil-sequential", "distil-tspipe"


def _ppl(row: dict) -> float | None:
    if row.get("mlm_ppl") is not None:
        return float(row["mlm_ppl"])
    last = (row.get("evals") or [{}])[-1]
    return last.get("mlm_ppl")


def _interval(d: dict | None, scale: float, unit: str) -> str:
    if d is None:
        return "fewer than two common seeds"
    unit = f" {unit}" if unit else ""
    return f"{scale * d['mean']:+.2f}{unit} [{scale * d['low']:+.2f}, {scale * d['high']:+.2f}]"


def summary(rows: Sequence[dict]) -> dict:
    """Means per run and the paired differences ``distil-sequential - mlm-only`` (accuracy and
    perplexity: distillation wins where the accuracy interval lies above 0 and the perplexity
    one below 0)."""
    runs = pd.DataFrame(
        [
            {"label": r["label"], "seed": r["seed"], "acc": float(r["metric_value"]), "ppl": _ppl(r)}
            for r in rows
            if r.get("label") not in (None, "teacher")
            and r.get("metric") == "mlm_acc"
            and r.get("metric_value") is not None
        ],
        columns=["label", "seed", "acc", "ppl"],
    )
    out = {"means": {}, "acc": None, "ppl": None}
    for label, group in runs.groupby("label", sort=False):
        out["means"][label] = {
            "seeds": len(group),
            "acc": float(group["acc"].mean()),
            "acc_std": float(group["acc"].std()) if len(group) > 1 else None,
            "ppl": float(group["ppl"].mean()),
        }
    for metric in ("acc", "ppl"):
        out[metric] = paired_difference(runs.rename(columns={metric: "metric_value"}), BASE, DISTIL)
    return out


def report(rows: Sequence[dict], command: str) -> str:
    """TABLE.md text from the rows only."""
    runs = [
        r
        for r in rows
        if r.get("label") and r.get("metric") == "mlm_acc" and r.get("metric_value") is not None
    ]
    runs.sort(key=lambda r: (r["label"] == "teacher", r["label"], r.get("seed") or 0))
    lines = [
        [
            r["label"],
            r["schedule"],
            r.get("stages"),
            r.get("seed") if r["label"] != "teacher" else "—",
            r.get("steps"),
            100 * r["metric_value"],
            _ppl(r),
            r.get("final_loss"),
            r.get("samples_per_s"),
        ]
        for r in runs
    ]
    headers = ["run", "schedule", "processes", "seed", "steps", "masked-token acc. %", "perplexity"]
    headers += ["final loss", "samples/s"]
    first = next((r for r in runs if r["label"] != "teacher"), runs[0] if runs else {})
    text = (
        "# DistilBERT-style distillation: held-out masked-token accuracy and perplexity\n\n"
        f"Measured with `{command}` (device {first.get('device')}, torch {first.get('torch')}, "
        f"git {first.get('git_sha')}, {first.get('date')}; teacher file {first.get('teacher_sha')}). "
        f"Model {first.get('model')}: the student starts from every other teacher layer; the same "
        "held-out blocks and masks for every row. *final loss* is the training loss of the last step "
        "(distillation and MLM-only losses differ in kind).\n\n" + markdown_table(headers, lines)
    )
    s = summary(rows)
    if s["means"]:
        text += "\n" + markdown_table(
            ["run", "seeds", "mean acc. %", "std acc. %", "mean perplexity"],
            [
                [
                    k,
                    m["seeds"],
                    100 * m["acc"],
                    100 * m["acc_std"] if m["acc_std"] is not None else None,
                    m["ppl"],
                ]
                for k, m in s["means"].items()
            ],
        )
        text += (
            f"\n`{DISTIL} - {BASE}`, paired by seed, 95 % Student-t interval: masked-token accuracy "
            f"{_interval(s['acc'], 100, 'points')} (above 0: distillation better), perplexity "
            f"{_interval(s['ppl'], 1, '')} (below 0: distillation better).\n"
        )
    teacher = next((r for r in runs if r["label"] == "teacher"), None)
    if teacher and BASE in s["means"]:
        gap = 100 * (teacher["metric_value"] - s["means"][BASE]["acc"])
        text += (
            f"\nThe teacher ({teacher.get('steps')} fine-tuning steps) against the student trained by "
            f"masked-LM alone: {gap:+.2f} points of accuracy, perplexity {_ppl(teacher):.1f} against "
            f"{s['means'][BASE]['ppl']:.1f}.\n"
        )
    diff = [r for r in rows if r.get("metric") == "max_param_diff"]
    for d in diff:
        text += (
            f"\nsequential vs tspipe, seed {d.get('seed')} (frozen teacher: no staleness; the same "
            f"micro-batches and backward pieces): largest parameter difference {d['metric_value']:.3g}, "
            f"relative L2 difference {d.get('relative_l2', float('nan')):.3g} after {d.get('steps')} "
            "steps (0: bitwise identical).\n"
        )
    return text


def bitwise_row(root: Path, seed: int, base: dict, previous: Sequence[dict], sha: str) -> dict:
    """The ``max_param_diff`` row of ``seed``: from the two runs' final checkpoints, or, where
    both runs were kept from the rows file without their folders, the row recorded with them.

    Raises:
        FileNotFoundError: if neither is there (delete the rows file to run the matrix again).
    """
    folders = [root / f"{DISTIL}-s{seed}", root / f"{PARALLEL}-s{seed}"]
    if all(sorted((f / "checkpoints").glob("step*")) for f in folders):
        # relative to the sequential student, as for KD
        largest, relative = parameter_difference(final_student(folders[1]), final_student(folders[0]))
        return make_row(
            method="distilbert",
            schedule="tspipe",
            model=base["model"],
            stages=2,
            metric="max_param_diff",
            metric_value=largest,
            relative_l2=relative,
            seed=seed,
            steps=base.get("steps"),
            simulated=False,
            device=base["device"],
            teacher_sha=sha,
        )
    old = [
        r
        for r in previous
        if r.get("metric") == "max_param_diff" and r.get("seed") == seed and r.get("teacher_sha") == sha
    ]
    if not old:
        raise FileNotFoundError(
            f"no checkpoints under {folders[0]} and {folders[1]} to compare, and no recorded difference; "
            "delete the rows file to run the matrix again"
        )
    return old[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.accuracy_distilbert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--parallel", type=int, default=2, help="one-process runs at a time")
    parser.add_argument("--out", type=Path, default=Path("results/distilbert/accuracy"))
    parser.add_argument("--report-only", action="store_true", help="only rebuild TABLE.md from the rows")
    parser.add_argument("--command", default="make accuracy-distilbert")
    parser.add_argument(
        "--preset", default=PRESET, help="trainer preset (tiny: a quick check of this driver)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args(argv)
    if not args.report_only:
        try:
            config = apply_overrides(METHOD.preset(args.preset), args.overrides)
            METHOD.check(config)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finetuned = config.method.teacher == "finetuned"
        if finetuned and not config.method.teacher_file.exists():
            print(
                f"error: no fine-tuned teacher at {config.method.teacher_file}; run `make teacher-distilbert`",
                file=sys.stderr,
            )
            return 2
        sha = file_sha(config.method.teacher_file) if finetuned else config.method.teacher
        root = ROOT / "runs" / "distilbert" / f"accuracy-{args.preset}"
        if forget_other_teacher(root, args.out / "rows.jsonl", sha):
            print(
                f"[accuracy] teacher {sha}: earlier runs made with another teacher dropped", file=sys.stderr
            )
        previous = existing_rows(args.out / "rows.jsonl")
        extra = tuple(args.overrides)
        first = args.seeds[0]
        pairs = [
            run
            for s in args.seeds
            for run in (
                AccuracyRun(DISTIL, "sequential", extra, s),
                AccuracyRun(BASE, "sequential", (*extra, "alpha_ce=0", "alpha_cos=0"), s),
            )
        ]
        # the one-process runs side by side (one core each); then tspipe on both cores
        rows = run_matrix("distilbert", args.preset, pairs, args.out, args.parallel, args.command)
        rows += run_matrix(
            "distilbert",
            args.preset,
            [AccuracyRun(PARALLEL, "tspipe", (*extra, "stages=2"), first)],
            args.out,
            1,
            args.command,
        )
        for row in rows:
            row.update(teacher_sha=sha, mlm_ppl=_ppl(row))
        rows.append(bitwise_row(root, first, rows[0], previous, sha))
        teacher = teacher_metrics(config.method.teacher_file) if finetuned else {}
        if teacher:
            rows.append(
                make_row(
                    method="distilbert",
                    schedule="sequential",
                    model="minilm6L384-ft (teacher)",
                    stages=1,
                    label="teacher",
                    metric="mlm_acc",
                    metric_value=teacher["mlm_acc"],
                    mlm_ppl=teacher["mlm_ppl"],
                    steps=teacher.get("steps"),
                    train_s=teacher.get("train_s"),
                    seed=teacher.get("config", {}).get("seed", 0),
                    simulated=False,
                    device=teacher.get("config", {}).get("device", "cpu"),
                    heldout_blocks=teacher.get("heldout_blocks"),
                    teacher_sha=sha,
                )
            )
        write_rows(args.out / "rows.jsonl", [provenance("distilbert", r, args.command) for r in rows])
    rows = read_rows(args.out / "rows.jsonl")
    (args.out / "TABLE.md").write_text(report(rows, args.command))
    print(f"wrote {args.out / 'TABLE.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
