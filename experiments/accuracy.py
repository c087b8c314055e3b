"""Accuracy runs: a matrix of (label, schedule, overrides) x seeds, two processes at a time.

Each run is ``python -m training METHOD`` with its own run folder; its ``row.json`` is copied
into the result rows, labelled. Runs whose row already exists are skipped (re-running the
command resumes a matrix cut short).

``python -m experiments.accuracy METHOD [--seeds 0 1 2] [--out DIR]`` runs the stale-teacher
parity of a method with an EMA teacher (``make accuracy-byol``, ``make accuracy-mocov3``): its
``accuracy`` preset under ``sequential`` (exact EMA teacher) and under ``tspipe`` on one stage,
whose teacher for mini-batch t is the EMA after step t - 2 exactly as on several stages (the
tests show tspipe's weights on 1, 2 and 4 processes equal the one-step-stale reference). Same
seeds, data order, augmentations and initial weights; one backward piece in both, so staleness
is the only difference. For the first seed both save the teacher every epoch, and the relative
L2 distance between the two teachers is recorded per epoch (rows with metric
``teacher_drift_rel_l2``); each seed's initial weights are evaluated too (label ``init``), to
measure what training gains. ``--symmetric`` adds the paper's ablation: ``tspipe`` with the
student's gradients also applied one step late (``training.delay``; label ``symmetric``).

A row already in ``OUT/rows.jsonl`` for the same label and seed, made with the config the run
would resolve now (its config digest) and with the method's current numerics fingerprint, is
kept, not re-run (the run would reproduce it: one thread, seeded data, augmentations and
weights); so more seeds or labels can be added to a matrix without redoing what holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from core.metrics import write_rows
from methods.registry import get_method

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AccuracyRun:
    """One training run of the matrix.

    Attributes:
        label: name in tables (``sync``, ``tspipe``, ...).
        schedule: ``--schedule``.
        overrides: extra arguments of ``python -m training``: ``key=value`` config overrides
            or a flag such as ``--student-delay=1`` (the rows list them as ``overrides``).
        seed: the run's seed.
    """

    label: str
    schedule: str
    overrides: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.label}-s{self.seed}"


def run_matrix(
    method: str,
    preset: str,
    runs: Sequence[AccuracyRun],
    out: Path,
    parallel: int = 2,
    command: str | None = None,
) -> list[dict]:
    """Run every training run (``parallel`` at a time), collect their rows into ``out/rows.jsonl``
    (``command``: what the rows say made them; default the method's accuracy command).

    Raises:
        RuntimeError: if a run fails (its log is named).
    """
    out.mkdir(parents=True, exist_ok=True)
    run_root = ROOT / "runs" / method / f"accuracy-{preset}"
    kept = current_rows(method, preset, out / "rows.jsonl", runs)
    done = finished_runs(method, preset, run_root, runs)
    pending = [r for r in runs if r.name not in kept and r.name not in done]
    if kept:
        print(
            f"[accuracy] kept {len(kept)} current rows of {out / 'rows.jsonl'}: {', '.join(kept)}",
            file=sys.stderr,
        )
    active: list[tuple[AccuracyRun, subprocess.Popen, float]] = []
    failures = []
    bar = tqdm(
        total=len(runs),
        initial=len(runs) - len(pending),
        desc=f"accuracy {method}",
        unit="run",
        file=sys.stderr,
    )
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.pop(0)
            folder = run_root / run.name
            shutil.rmtree(folder, ignore_errors=True)  # a run cut short or made by other code
            folder.mkdir(parents=True)
            cmd = [sys.executable, "-m", "training", *run_args(method, preset, run), f"run_dir={folder}"]
            log = (folder / "stdout.log").open("w")
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            active.append(
                (
                    run,
                    subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env),
                    time.monotonic(),
                )
            )
            bar.set_postfix_str(", ".join(r.name for r, _, _ in active))
        time.sleep(2.0)
        for item in list(active):
            run, proc, started = item
            if proc.poll() is None:
                continue
            active.remove(item)
            minutes = (time.monotonic() - started) / 60
            bar.update(1)
            if proc.returncode != 0:
                failures.append(run.name)
                bar.write(f"[accuracy] {run.name} FAILED (see {run_root / run.name / 'stdout.log'})")
            else:
                bar.write(f"[accuracy] {run.name} done in {minutes:.1f} min")
    bar.close()
    if failures:
        raise RuntimeError(f"accuracy runs failed: {', '.join(failures)}")
    rows = [
        kept[run.name]
        if run.name in kept
        else {
            **json.loads((run_root / run.name / "row.json").read_text()),
            "label": run.label,
            "overrides": list(run.overrides),
        }
        for run in runs
    ]
    # a kept row says what made it; a new one, this matrix's command
    rows = [
        provenance(method, row, row.get("command") if run.name in kept else command)
        for run, row in zip(runs, rows)
    ]
    # the file keeps the rows of other runs (a driver's earlier matrix, its extra rows) until the
    # driver writes its final set: a later failure loses nothing measured
    ours = {(r.label, r.seed) for r in runs}
    others = [r for r in existing_rows(out / "rows.jsonl") if (r.get("label"), r.get("seed")) not in ours]
    write_rows(out / "rows.jsonl", [*rows, *others])
    return rows


def existing_rows(path: Path) -> list[dict]:
    """The rows of ``path``, or none where it does not exist."""
    from core.metrics import read_rows

    return read_rows(path) if path.exists() else []


def file_sha(path: Path) -> str:
    """The SHA-256 of a file, as 16 hex digits."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def forget_other_teacher(run_root: Path, rows_file: Path, sha: str) -> bool:
    """Drop the runs and rows made with a teacher other than ``sha`` (the SHA-256 of a frozen
    teacher's file, which neither the config digest nor the numerics fingerprint sees), and
    record ``sha`` under ``run_root``. The run folders go unless ``run_root`` records ``sha``; a row stays if it
    records ``sha``, or records no teacher (written by a matrix cut short before the driver's
    final write) while ``run_root`` records ``sha``. True if anything was dropped."""
    marker = run_root / "teacher.sha"
    same = marker.exists() and marker.read_text().strip() == sha
    dropped = False
    if run_root.exists() and not same:
        shutil.rmtree(run_root)
        dropped = True
    if rows_file.exists():
        rows = existing_rows(rows_file)
        kept = [r for r in rows if r.get("teacher_sha", sha if same else None) == sha]
        if len(kept) < len(rows):
            write_rows(rows_file, kept)
            dropped = True
    run_root.mkdir(parents=True, exist_ok=True)
    marker.write_text(sha + "\n")
    return dropped


def final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    """The student's weights after the run's last step, merged over the ranks' checkpoint files.

    Raises:
        FileNotFoundError: if the run has no checkpoint.
    """
    folders = sorted((run_dir / "checkpoints").glob("step*"))
    if not folders:
        raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'}")
    state: dict[str, torch.Tensor] = {}
    for rank_file in sorted(folders[-1].glob("rank*.pt")):
        state.update(torch.load(rank_file, map_location="cpu", weights_only=True)["stage"]["student"])
    return state


def parameter_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(largest absolute difference, relative L2 distance) over the floating entries of two
    state dicts (parameters and BatchNorm statistics).

    Raises:
        ValueError: if the two hold different entries.
    """
    if sorted(a) != sorted(b):
        raise ValueError("the two students hold different entries; were they trained with the same preset?")
    keys = [k for k in sorted(a) if a[k].is_floating_point()]
    largest = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in keys]).norm()
    base = torch.cat([b[k].double().flatten() for k in keys]).norm()
    return largest, float(diff / base)


def run_args(method: str, preset: str, run: AccuracyRun) -> list[str]:
    """The ``python -m training`` arguments of one run (without its run folder)."""
    return [method, "--preset", preset, "--schedule", run.schedule, f"seed={run.seed}", *run.overrides]


def finished_runs(method: str, preset: str, run_root: Path, runs: Sequence[AccuracyRun]) -> set[str]:
    """The runs whose folder under ``run_root`` holds a ``row.json`` that running them now would
    reproduce (:func:`reproducible`): a matrix cut short resumes with them; any other folder is
    run again from scratch."""
    expected = config_digests(method, preset, runs)
    return {
        r.name
        for r in runs
        if (run_root / r.name / "row.json").exists()
        and reproducible(method, json.loads((run_root / r.name / "row.json").read_text()), expected[r.name])
    }


def config_digests(method: str, preset: str, runs: Sequence[AccuracyRun]) -> dict[str, str]:
    """Each run's config digest (``training.folder.config_digest``) as its arguments resolve now."""
    from training.cli import parse_args
    from training.folder import config_digest

    return {r.name: config_digest(*parse_args(run_args(method, preset, r))[1:]) for r in runs}


def reproducible(method: str, row: dict, digest: str) -> bool:
    """Whether running the config of digest ``digest`` now would reproduce ``row``: the row was
    made from committed code whose numerics fingerprint is the method's current one (checked at
    the row's own commit, so a fingerprint stamped on it later counts for nothing), with that
    config digest. Rows without a config digest (made before rows carried one) never are."""
    from analysis.provenance import digests_at

    current = provenance(method, {})["fingerprint"]
    sha = str(row.get("git_sha"))
    return (
        current is not None
        and row.get("config_digest") == digest
        and not sha.endswith("+dirty")
        and row.get("fingerprint", current) == current
        and digests_at(sha, ROOT).get(method) == current
    )


def current_rows(method: str, preset: str, path: Path, runs: Sequence[AccuracyRun]) -> dict[str, dict]:
    """The rows of ``path`` that runs of ``runs`` would reproduce (same label and seed, and
    :func:`reproducible`), by run name."""
    if not path.exists():
        return {}
    from core.metrics import read_rows

    digests = config_digests(method, preset, runs)
    wanted = {(r.label, r.seed): r.name for r in runs}
    out = {}
    for row in read_rows(path):
        name = wanted.get((row.get("label"), row.get("seed")))
        if name is not None and reproducible(method, row, digests[name]):
            out[name] = row
    return out


def provenance(method: str, row: dict, command: str | None = None) -> dict:
    """A row with what the report needs to judge it: the method's title, the command that makes
    its rows, and its numerics fingerprint (``tests/golden``), on which its freshness depends."""
    spec = get_method(method)
    golden = ROOT / "tests" / "golden" / "fingerprints.json"
    digest = json.loads(golden.read_text())["methods"].get(method) if golden.exists() else None
    return {
        **row,
        "method_title": spec.title,
        "command": command or spec.accuracy_command,
        "fingerprint": digest,
    }


def initial_rows(
    method: str,
    preset_name: str,
    seeds: Sequence[int],
    command: str | None = None,
    overrides: Sequence[str] = (),
) -> list[dict]:
    """The metric of each seed's initial weights (label ``init``, step 0, schedule ``none``): what
    training gains is measured against it. The weights are the ones every run of that seed
    starts from (the task builds them from its seed), under the runs' config ``overrides``.

    Raises:
        ValueError: for a method without an evaluation.
    """
    from torch import nn

    from core.metrics import make_row
    from core.overrides import apply_overrides
    from core.runtime import prepare_models

    spec, rows = get_method(method), []
    for seed in seeds:
        config = apply_overrides(spec.preset(preset_name), [f"seed={seed}", *overrides])
        previous = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, config.run.dtype))  # as training.run builds them
        try:
            run = spec.setup(config)
            student, teacher = prepare_models(run.task)
        finally:
            torch.set_default_dtype(previous)
        if run.evaluate is None or run.metric is None:
            raise ValueError(f"{method} with preset {preset_name} has no evaluation to measure")
        state = {
            kind: nn.Sequential(*blocks).state_dict()
            for kind, blocks in (("student", student), ("teacher", teacher))
        }
        value = run.evaluate(state)[run.metric]
        row = make_row(
            method=method,
            schedule="none",
            model=run.model,
            metric=run.metric,
            metric_value=value,
            seed=seed,
            simulated=False,
            steps=0,
            epochs=0.0,
            device="cpu",
        )
        rows.append(provenance(method, {**row, "label": "init", "overrides": list(overrides)}, command))
    return rows


def teacher_drift(sync_dir: Path, stale_dir: Path) -> list[tuple[int, float]]:
    """(step, relative L2 of the stale teacher from the synchronous one) per common checkpoint."""
    out = []
    for folder in sorted((sync_dir / "checkpoints").glob("step*")):
        other = stale_dir / "checkpoints" / folder.name
        if not (other / "rank0.pt").exists():
            continue
        a = torch.load(folder / "rank0.pt", weights_only=True)["stage"]["teacher"]
        b = torch.load(other / "rank0.pt", weights_only=True)["stage"]["teacher"]
        keys = [k for k in a if a[k].is_floating_point()]
        diff = torch.cat([(b[k] - a[k]).double().flatten() for k in keys]).norm()
        base = torch.cat([a[k].double().flatten() for k in keys]).norm()
        out.append((int(folder.name.removeprefix("step")), float(diff / base)))
    return out


def stale_teacher_parity(
    method: str,
    preset_name: str,
    seeds: Sequence[int],
    out: Path,
    parallel: int = 2,
    symmetric: bool = False,
) -> list[dict]:
    """Synchronous training (``sequential``: exact EMA teacher) against ``tspipe`` (one-step-stale
    teacher) for every seed, on one process each (``tspipe`` on one stage reads exactly the
    teacher it reads on several: the engine tests show its weights on 1, 2 and 4 processes agree
    to rounding). The first seed saves the teacher every epoch, and the relative L2 distance of
    the two teachers per epoch is added to the rows (metric ``teacher_drift_rel_l2``; kept from
    the previous rows when both runs of the first seed were kept). ``symmetric`` adds ``tspipe``
    with the student's gradients one step late (label ``symmetric``).

    Returns:
        The rows written to ``out/rows.jsonl``.
    """
    from core.metrics import make_row

    preset = get_method(method).preset(preset_name).method
    per_epoch = preset.train_subset // preset.batch
    runs = []
    for seed in seeds:
        extra = (f"checkpoint_every={per_epoch}",) if seed == seeds[0] else ()
        runs.append(AccuracyRun("sync", "sequential", extra, seed))
        runs.append(AccuracyRun("tspipe", "tspipe", extra, seed))
        if symmetric:
            runs.append(AccuracyRun("symmetric", "tspipe", ("--student-delay=1",), seed))
    previous = existing_rows(out / "rows.jsonl")
    kept = current_rows(method, preset_name, out / "rows.jsonl", runs)
    first = {f"sync-s{seeds[0]}", f"tspipe-s{seeds[0]}"}
    old_drift = [
        r for r in previous if r.get("metric") == "teacher_drift_rel_l2" and r.get("seed") == seeds[0]
    ]
    old_drift = old_drift if first <= set(kept) else []
    rows = run_matrix(method, preset_name, runs, out, parallel)
    root = ROOT / "runs" / method / f"accuracy-{preset_name}"
    drift = teacher_drift(root / f"sync-s{seeds[0]}", root / f"tspipe-s{seeds[0]}")
    rows += initial_rows(method, preset_name, seeds)
    if not drift:  # both runs of the first seed were kept, not re-run: so is their drift
        rows += old_drift
    rows += [
        make_row(
            method=method,
            schedule="tspipe",
            model=rows[0]["model"],
            metric="teacher_drift_rel_l2",
            metric_value=value,
            seed=seeds[0],
            simulated=False,
            epoch=step / per_epoch,
            step=step,
            device="cpu",
        )
        for step, value in drift
    ]
    write_rows(out / "rows.jsonl", [provenance(method, r) for r in rows])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m experiments.accuracy", description=__doc__)
    parser.add_argument("method", help="a method with an EMA teacher (byol, moco_v3)")
    parser.add_argument("--preset", default="accuracy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/METHOD/accuracy")
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="also tspipe with the student's gradients one step late (the paper's ablation)",
    )
    args = parser.parse_args(argv)
    out = args.out or Path("results") / args.method / "accuracy"
    stale_teacher_parity(args.method, args.preset, args.seeds, out, args.parallel, args.symmetric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
