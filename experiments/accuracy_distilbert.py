"""`make accuracy-distilbert`: distillation under sequential and under tspipe, and MLM alone.

Three runs of the ``accuracy`` preset (``experiments/distilbert.py``: the fine-tuned MiniLM
teacher into a 3-layer student on Shakespeare + KJV, 128-token blocks, batch 16, 2 micro-batches,
one backward piece), each evaluated on the same 512 held-out blocks with the same masks:

* ``distil-sequential``: DistilBERT's three losses, one process;
* ``distil-tspipe``: the same on 2 pipeline stages with tspipe. The teacher is frozen, so tspipe
  has no staleness and must train the same student: the largest parameter difference from the
  sequential run is recorded (a row with ``metric = max_param_diff``);
* ``mlm-only``: the same student trained with the masked-LM loss alone (``alpha_ce = alpha_cos =
  0``), the baseline distillation should beat.

Rows go to ``OUT/rows.jsonl`` (plus the teacher's held-out metrics from ``teacher.json`` and the
parameter difference); ``OUT/TABLE.md`` is generated from the rows (``--report-only`` redoes
only that). Runs whose row exists are skipped, so an interrupted matrix resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from analysis.tables import markdown_table
from core.metrics import make_row, read_rows, write_rows
from core.overrides import apply_overrides
from experiments.accuracy import ROOT, AccuracyRun, provenance, run_matrix
from methods.distilbert import METHOD
from methods.distilbert.model import teacher_metrics

PRESET = "accuracy"


def final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    """The student weights of a run's last checkpoint, merged over its ranks."""
    folder = sorted((run_dir / "checkpoints").glob("step*"))[-1]
    state: dict[str, torch.Tensor] = {}
    for part in sorted(folder.glob("rank*.pt")):
        state.update(torch.load(part, weights_only=True)["stage"]["student"])
    return state


def parameter_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(largest absolute difference, relative L2 difference) over the floating-point tensors."""
    keys = [k for k in a if a[k].is_floating_point()]
    if sorted(keys) != sorted(k for k in b if b[k].is_floating_point()):
        raise ValueError("the two students have different parameters")
    largest = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in keys]).norm()
    base = torch.cat([a[k].double().flatten() for k in keys]).norm()
    return largest, float(diff / base)


def report(rows: Sequence[dict], command: str) -> str:
    """TABLE.md text from the rows only."""
    runs = [r for r in rows if r.get("label") and r.get("metric") == "mlm_acc"]
    lines = []
    for r in runs:
        last = (r.get("evals") or [{}])[-1]
        lines.append(
            [
                r["label"],
                r["schedule"],
                r.get("stages"),
                r.get("steps"),
                100 * r["metric_value"] if r.get("metric_value") is not None else None,
                last.get("mlm_ppl", r.get("mlm_ppl")),
                r.get("final_loss"),
                r.get("samples_per_s"),
            ]
        )
    headers = [
        "run",
        "schedule",
        "processes",
        "steps",
        "masked-token acc. %",
        "perplexity",
        "final loss",
        "samples/s",
    ]
    first = runs[0] if runs else {}
    text = (
        "# DistilBERT-style distillation: held-out masked-token accuracy and perplexity\n\n"
        f"Measured with `{command}` (device {first.get('device')}, torch {first.get('torch')}, "
        f"git {first.get('git_sha')}, {first.get('date')}). Model {first.get('model')}: the student "
        "starts from every other teacher layer; the same held-out blocks and masks for every row. "
        "*final loss* is the training loss of the last step (distillation and MLM-only losses "
        "differ in kind).\n\n" + markdown_table(headers, lines)
    )
    diff = [r for r in rows if r.get("metric") == "max_param_diff"]
    if diff:
        d = diff[-1]
        text += (
            f"\nsequential vs tspipe (frozen teacher: no staleness; the same micro-batches and backward "
            f"pieces): largest parameter difference {d['metric_value']:.3g}, relative L2 difference "
            f"{d.get('relative_l2', float('nan')):.3g} after {d.get('steps')} steps (0: bitwise identical).\n"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.accuracy_distilbert", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (tspipe runs 2 processes)")
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
        # the two single-process runs first, side by side; then tspipe on two processes
        extra = tuple(args.overrides)
        runs = [
            AccuracyRun("distil-sequential", "sequential", extra, args.seed),
            AccuracyRun("mlm-only", "sequential", (*extra, "alpha_ce=0", "alpha_cos=0"), args.seed),
            AccuracyRun("distil-tspipe", "tspipe", (*extra, "stages=2"), args.seed),
        ]
        rows = run_matrix("distilbert", args.preset, runs, args.out, args.parallel)
        root = ROOT / "runs" / "distilbert" / f"accuracy-{args.preset}"
        largest, relative = parameter_difference(
            final_student(root / f"distil-sequential-s{args.seed}"),
            final_student(root / f"distil-tspipe-s{args.seed}"),
        )
        base = rows[0]
        rows.append(
            make_row(
                method="distilbert",
                schedule="tspipe",
                model=base["model"],
                stages=2,
                metric="max_param_diff",
                metric_value=largest,
                relative_l2=relative,
                seed=args.seed,
                steps=base.get("steps"),
                simulated=False,
                device=base["device"],
            )
        )
        teacher = teacher_metrics(config.method.teacher_file) if config.method.teacher == "finetuned" else {}
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
                    seed=args.seed,
                    simulated=False,
                    device="cpu",
                    heldout_blocks=teacher.get("heldout_blocks"),
                )
            )
        write_rows(args.out / "rows.jsonl", [provenance("distilbert", r) for r in rows])
    rows = read_rows(args.out / "rows.jsonl")
    (args.out / "TABLE.md").write_text(report(rows, args.command))
    print(f"wrote {args.out / 'TABLE.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
