"""`make accuracy-kd`: does distillation help, and does tspipe change it? Fashion-MNIST, CPU.

Every run uses the ``accuracy`` preset (``methods/soft_target/presets.py``: a ResNet-18 of width
8 trained from scratch at 16x16, 10 epochs, top-1 on the 10,000 test images after every epoch;
two micro-batches and one backward piece everywhere) with the student's training data cut to a
fixed subset of 1,000 images (``train_subset=1000``; the teacher saw all 60,000), eight seeds (``make accuracy-kd``):

- ``student-alone``: cross-entropy only (alpha = 0, no teacher), sequential;
- ``kd-sequential``: soft targets of the `make teacher-kd` teacher, one process;
- ``kd-tspipe``: the same under tspipe on 2 processes (one thread each).

Why 1,000 images: with the preset's 10,000 the student alone came within 1.1 points of the
teacher and KD gained 0.16 points (one seed), noise; soft targets help most where the student's
own labelled data is scarce (Hinton et al., 2015, "Distilling the Knowledge in a Neural
Network", section 3: soft targets let a model trained on 3 % of the data generalise), so the
smaller subset makes the effect of distillation, and any effect of the schedule on it, visible.

Same seeds, data order and initial weights. The teacher is frozen, so tspipe has no staleness
and its student must equal the sequential one: the largest parameter difference between the two
after training is recorded as a row, beside the teacher's own top-1. The first two runs go side
by side (one core each), then tspipe takes both cores. Every row records the teacher file's
SHA-256 (``teacher_sha``): runs made with another teacher are run again, since neither the
config nor the numerics fingerprint tells two teachers apart.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from core.metrics import make_row, write_rows
from core.overrides import ConfigError, apply_overrides
from experiments.accuracy import (
    ROOT,
    AccuracyRun,
    file_sha,
    final_student,
    forget_other_teacher,
    parameter_difference,
    provenance,
    run_matrix,
)
from methods.soft_target import METHOD
from methods.soft_target.models import load_teacher
from methods.soft_target.presets import teacher_command

PRESET = "accuracy"
DEFAULT_SET = ("train_subset=1000",)  # the student's data budget (see the module docstring)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.accuracy_kd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--preset", default=PRESET, help="trainer preset of every run (tiny: a smoke run)")
    parser.add_argument(
        "--set", nargs="*", default=list(DEFAULT_SET), metavar="KEY=VALUE", help="overrides for every run"
    )
    parser.add_argument("--out", type=Path, default=Path("results/soft_target/accuracy"))
    args = parser.parse_args(argv)
    try:
        full = apply_overrides(METHOD.preset(args.preset), args.set)
        config = full.method
    except (ConfigError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = config.teacher_path()
    command = teacher_command(config.teacher_arch(), config.dataset, path)
    try:
        teacher = load_teacher(path, config.teacher_arch(), command)
    except ConfigError as err:
        if "no teacher checkpoint" not in str(err) or command != "make teacher-kd":
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("[accuracy] no teacher checkpoint: training it first (make teacher-kd)", file=sys.stderr)
        made = subprocess.run(
            [sys.executable, "-m", "methods.soft_target.teacher", "--preset", "cpu"], cwd=ROOT
        )
        if made.returncode != 0:
            return made.returncode
        teacher = load_teacher(path, config.teacher_arch(), command)

    sha = file_sha(path) if path is not None else "random"
    run_root = ROOT / "runs" / "soft_target" / f"accuracy-{args.preset}"
    if forget_other_teacher(run_root, args.out / "rows.jsonl", sha):
        print(f"[accuracy] teacher {sha}: earlier runs made with another teacher dropped", file=sys.stderr)
    extra = tuple(args.set)
    alone = [AccuracyRun("student-alone", "sequential", ("alpha=0", *extra), s) for s in args.seeds]
    kd_seq = [AccuracyRun("kd-sequential", "sequential", extra, s) for s in args.seeds]
    kd_ts = [AccuracyRun("kd-tspipe", "tspipe", ("stages=2", *extra), s) for s in args.seeds]
    # one-process runs two at a time, then the two-process runs one at a time
    rows = run_matrix("soft_target", args.preset, [*alone, *kd_seq], args.out, parallel=2)
    rows += run_matrix("soft_target", args.preset, kd_ts, args.out, parallel=1)
    test_images = {"fashion_mnist": 10000, "digits": 297}.get(config.dataset)
    for row in rows:
        row.update(processes=row["stages"], dataset=config.dataset, test_images=test_images)

    rows.append(
        make_row(
            method="soft_target",
            schedule="single-process",
            model=config.teacher,
            stages=1,
            global_batch=teacher.get("batch"),
            device="cpu",
            metric="top1",
            metric_value=float(teacher["test_top1"]),
            seed=0,
            simulated=False,
            label="teacher",
            dataset=teacher.get("dataset"),
            test_images=test_images,
            epochs=teacher.get("epochs"),
            steps=teacher.get("steps"),
            train_s=teacher.get("train_s"),
            train_images=teacher.get("train_images"),
            teacher_checkpoint=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        )
    )
    for seed in args.seeds:
        seq = final_student(run_root / f"kd-sequential-s{seed}")
        ts = final_student(run_root / f"kd-tspipe-s{seed}")
        largest, relative = parameter_difference(ts, seq)
        rows.append(
            make_row(
                method="soft_target",
                schedule="tspipe",
                model=rows[0]["model"],
                stages=2,
                device="cpu",
                metric="max_abs_param_diff",
                metric_value=largest,
                seed=seed,
                simulated=False,
                relative_l2=relative,
                compared="kd-tspipe vs kd-sequential students after training",
            )
        )
        print(
            f"[accuracy] seed {seed}: tspipe vs sequential student, largest parameter difference {largest:.3g} "
            f"(relative L2 {relative:.3g})",
            file=sys.stderr,
        )
    write_rows(args.out / "rows.jsonl", [provenance("soft_target", {**r, "teacher_sha": sha}) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
