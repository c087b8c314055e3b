"""The prepared GPU run (``make gpu-check``): one script, every part time-boxed, everything
under one folder.

Parts, in order (a part that would overrun the time left is skipped with a message, and says so
in ``log.json``):

1. ``overhead``: the engine's one-stage step against a plain PyTorch loop
   (``experiments.gpucheck``), for each method's GPU preset.
2. ``train``: a short real training run of BYOL ResNet-50 (one stage, 20 steps, bf16): the
   losses, and whether they went down.
3. ``multiproc``: 2 and 4 processes on the one GPU over the host-staged transport, gpipe and
   tspipe, fp32 and bf16, against the one-process reference (``experiments.gpu_parts``;
   ``multiproc/errors.jsonl``; timings in that mode are not pipeline throughput).
4. ``compiled``: one stage's blocks eager against compiled over a micro-batch sweep; the
   ``<pair>-compiled_mbsweep_*`` calibration and ``compiled/table.md`` (micro-batch 16).
5. ``calibrate``: the configurations of the paper's 8-GPU table (``experiments/paper``), largest
   tspipe-over-mp gain first, each with ``experiments.calibrate`` (per-block costs over a
   micro-batch sweep, whole networks, the sequential step, peak memory), as many as time allows;
   ``paper_calibrations.csv`` maps each paper row to its file.
6. ``pytest``: the ``gpu``-marked tests.

On a GPU each part runs in a process of its own (``--part NAME``, isolation on by default
there) with a hard limit of its own box and the time left: a part that hangs or overruns is
killed (``log.json`` says so) and the parts after it still run, and a crash cannot take the
run's log with it. Each part's result is kept in ``parts/<name>.json`` as it finishes.

``--device cpu`` runs the same parts with each method's ``tiny`` preset in seconds, in this
process (a dry run, part of ``make test``).
``python -m experiments.gpu_run [--device cuda] [--budget-s 480] [--out DIR] [--archive F.tar.gz]
[--isolate|--no-isolate]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from core.metrics import make_row, write_rows
from core.overrides import apply_overrides
from core.runtime import make_runner
from experiments import calibrate, gpu_parts, gpucheck
from methods.registry import get_method

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "experiments" / "paper" / "tspipe_throughput_8xV100.csv"
METHODS = ("byol", "moco_v3", "soft_target", "distilbert")
# each row of the paper's table (method, teacher, student) -> the preset of the same models
PAPER_PRESETS = {
    ("soft_target", "ViT-Large", "ResNet-101"): "vitl16-to-resnet101-224-8gpu",
    ("soft_target", "ViT-Large", "ResNet-152"): "vitl16-to-resnet152-224-8gpu",
    ("soft_target", "ViT-Huge", "ResNet-101"): "vith14-to-resnet101-224-8gpu",
    ("soft_target", "ViT-Huge", "ResNet-152"): "vith14-to-resnet152-224-8gpu",
    ("distilbert", "BERT-xlarge", "BERT-xlarge student"): "bertxlarge-128-8gpu",
    ("distilbert", "BERT-xxlarge", "BERT-xxlarge student"): "bertxxlarge-128-8gpu",
    **{("byol", f"ResNet-{d}", f"ResNet-{d}"): f"resnet{d}-224-8gpu" for d in (18, 50, 101, 152)},
    **{
        ("moco_v3", f"ViT-{s}", f"ViT-{s}"): f"vit_{s.lower()}-224-8gpu"
        for s in ("Small", "Base", "Large", "Huge")
    },
}
# dry run: tiny shapes; a KD run is timed without a trained teacher
TINY = {"soft_target": ["method.dataset=synthetic", "method.teacher_checkpoint=random"]}
CPU_SETTINGS = ["run.device=cpu", "pipeline.amp_bf16=false"]


class Clock:
    """The run's time box: a part starts only if its estimate fits in what is left.

    Args:
        budget_s: the whole run's time box.
        isolate: run each part as ``python -m experiments.gpu_run --part NAME`` (``child``
            gives the rest of that command line), killed at its box or at the end of the
            budget, whichever comes first; otherwise call the part here.
        child: the arguments that name the device and output folder for the child.
        out: where the children leave ``parts/<name>.json``.
    """

    def __init__(
        self, budget_s: float, isolate: bool = False, child: Sequence[str] = (), out: Path | None = None
    ) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.isolate, self.child, self.out = isolate, list(child), out
        self.log: list[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def run(
        self, name: str, estimate_s: float, fn: Callable[[], dict | None], box_s: float | None = None
    ) -> dict | None:
        """Run ``fn`` (or, isolated, the part ``name`` in a child) if ``estimate_s`` fits; log its
        outcome (errors are logged, not raised). ``box_s``: the most an isolated part may take."""
        entry: dict = {"part": name, "estimate_s": estimate_s}
        if estimate_s > self.left():
            entry["status"] = f"skipped: {self.left():.0f} s left, needs about {estimate_s:.0f} s"
            print(f"[gpu_run] {name}: {entry['status']}", file=sys.stderr, flush=True)
            self.log.append(entry)
            return None
        print(f"[gpu_run] {name} ({self.left():.0f} s left)", file=sys.stderr, flush=True)
        began = time.perf_counter()
        result = None
        try:
            if self.isolate:
                limit = max(min(box_s if box_s is not None else self.left(), self.left()), 1.0)
                entry["box_s"] = round(limit, 1)
                result = self._child(name, limit)
            else:
                result = fn()
            entry["status"] = "done"
        except (Exception, SystemExit) as err:  # one failed part must not lose the others
            entry["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[gpu_run] {name}: {entry['status']}", file=sys.stderr, flush=True)
        entry["wall_s"] = time.perf_counter() - began
        self.log.append(entry)
        return result

    def _child(self, name: str, limit_s: float) -> dict | None:
        """Run part ``name`` in a process group of its own; kill the group after ``limit_s``."""
        assert self.out is not None
        result_file = part_file(self.out, name)
        result_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "experiments.gpu_run", *self.child, "--part", name]
        env = {**os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"killed after its box of {limit_s:.0f} s") from None
        if code:
            raise RuntimeError(f"the part's process exited {code}")
        if not result_file.exists():
            raise RuntimeError(f"the part wrote no {result_file.name}")
        return json.loads(result_file.read_text())


def pack(folder: Path, archive: Path) -> Path:
    """``folder`` as a .tar.gz at ``archive`` (written beside it, then moved into place)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    partial.replace(archive)
    return archive


def part_file(out: Path, name: str) -> Path:
    """Where part ``name`` keeps its result."""
    return out / "parts" / (name.replace(" ", "_").replace("/", "-") + ".json")


def run_part(name: str, device: str, out: Path) -> dict | None:
    """Run one part by its name in the log (``overhead byol``, ``calibrate byol resnet50-224-8gpu``,
    ...) and keep its result in :func:`part_file`."""
    gpu = device == "cuda"
    kind, *rest = name.split()
    if kind == "overhead":
        result = overhead(rest[0], device, out, 25 if gpu else 4)
    elif kind == "train":
        result = train(device, out, 20 if gpu else 4)
    elif kind == "multiproc":
        result = gpu_parts.multiproc(device, out)
    elif kind == "compiled":
        result = gpu_parts.compiled(device, out)
    elif kind == "calibrate":
        result = calibrate_pair(rest[0], rest[1], device, out)
    elif kind == "pytest":
        result = {
            "exit": subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"],
                cwd=ROOT,
            ).returncode
        }
    else:
        raise ValueError(f"no part {name!r}")
    path = part_file(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def paper_order(paper: Path = PAPER) -> list[tuple[str, str, str, float]]:
    """The paper's rows as (method, teacher, student, tspipe over mp), largest gain first."""
    table = pd.read_csv(paper).sort_values("tspipe_over_mp", ascending=False)
    return [
        (r["method"], r["teacher"], r["student"], float(r["tspipe_over_mp"]))
        for r in table.to_dict("records")
    ]


def overhead(method: str, device: str, out: Path, steps: int) -> dict:
    """Engine overhead of one method (rows under ``out/overhead/<method>``)."""
    tiny = [] if device == "cuda" else [*TINY.get(method, []), *CPU_SETTINGS, "--preset", "tiny"]
    code = gpucheck.main([method, *tiny, "--steps", str(steps), "--out", str(out / "overhead" / method)])
    if code:
        raise RuntimeError(f"experiments.gpucheck {method} exited {code}")
    rows = [json.loads(line) for line in (out / "overhead" / method / "rows.jsonl").read_text().splitlines()]
    return {"method": method, "engine_overhead": rows[-1]["engine_overhead"]}


def train(device: str, out: Path, steps: int) -> dict:
    """A short training run of BYOL on one stage; its losses and whether they went down."""
    spec = get_method("byol")
    preset = "resnet50-224-4gpu" if device == "cuda" else "tiny"
    settings = [] if device == "cuda" else CPU_SETTINGS
    config = apply_overrides(
        spec.preset(preset),
        [
            "pipeline.schedule=sequential",
            "pipeline.stages=1",
            "pipeline.microbatches=1",
            f"run.steps={steps}",
            *settings,
        ],
    )
    setup = spec.setup(config)
    dev = torch.device(device)
    runner = make_runner(setup.task, config.pipeline, dev, setup.optimizer, setup.scheduler)
    started = time.perf_counter()
    log = runner.run(setup.batches(0, steps), steps)
    runner.close()
    wall = time.perf_counter() - started
    losses = [float(x["loss"]) for x in log.losses]
    k = max(len(losses) // 4, 1)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    row = make_row(
        method="byol",
        schedule="sequential",
        model=setup.model,
        stages=1,
        microbatches=1,
        global_batch=setup.samples_per_step,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        simulated=False,
        kind="train",
        amp_bf16=config.pipeline.amp_bf16,
        steps=steps,
        losses=losses,
        loss_first_quarter=first,
        loss_last_quarter=last,
        loss_went_down=last < first,
        wall_s=wall,
        peak_mem_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    )
    write_rows(out / "train" / "rows.jsonl", [row])
    return {"loss_first_quarter": first, "loss_last_quarter": last, "loss_went_down": last < first}


def calibrate_pair(method: str, preset: str, device: str, out: Path) -> dict:
    """Calibrate one pair into ``out/calibration``."""
    if device == "cuda":  # three sizes and the base unit: enough for the fixed + per-sample fit
        base, sweep = calibrate.calibrate(method, preset, device, sweep=[8, 32, 128])
    else:
        tiny = [*TINY.get(method, []), "pipeline.amp_bf16=false"]
        base, sweep = calibrate.calibrate(method, "tiny", device, sweep=[8], repeats=1, overrides=tiny)
        base["pair"] = sweep["pair"] = f"{calibrate.pair_name(method, preset)}-tiny"
    path = calibrate.write(base, sweep, out / "calibration")
    return {"file": path.name, "seq_step_ms": base["seq_step_ms"], "wall_s": base["wall_s"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.gpu_run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--budget-s", type=float, default=480.0, help="time box of the whole run")
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each part in a process of its own, killed at its box (default: on a GPU)",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="also keep everything under --out in this .tar.gz, renewed after every part (one file "
        "to copy back from a machine that returns few files)",
    )
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # one part, in a child
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_run: no CUDA device; run on a GPU machine, or pass --device cpu for the dry run",
            file=sys.stderr,
        )
        return 2
    if args.part:
        run_part(args.part, args.device, args.out)
        return 0
    gpu = args.device == "cuda"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    isolate = gpu if args.isolate is None else args.isolate
    clock = Clock(
        args.budget_s, isolate, ["--device", args.device, "--out", str(args.out.resolve())], args.out
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list] = {"overhead": [], "train": [], "calibrate": []}

    def write_log() -> dict:
        log = {
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "torch": torch.__version__,
            "budget_s": args.budget_s,
            "wall_s": args.budget_s - clock.left(),
            "isolated": isolate,
            "parts": clock.log,
            "results": results,
        }
        (args.out / "log.json").write_text(json.dumps(log, indent=1) + "\n")
        if args.archive:
            pack(args.out, args.archive)
        return log

    def part(name: str, estimate_s: float, box_s: float) -> dict | None:
        result = clock.run(name, estimate_s, lambda: run_part(name, args.device, args.out), box_s)
        write_log()  # kept after every part, should the run be cut off
        return result

    # estimates and boxes in seconds on the GPU (the dry run's parts take a second or two)
    if "overhead" not in skip:
        for method in METHODS:
            results["overhead"].append(part(f"overhead {method}", 30 if gpu else 1, 60))
    if "multiproc" not in skip:
        results["multiproc"] = [part("multiproc host-staged", 60 if gpu else 1, 100)]
    if "train" not in skip:
        results["train"].append(part("train byol", 30 if gpu else 1, 60))
    if "pytest" not in skip and gpu:
        results["pytest"] = [part("pytest -m gpu", 30, 60)]
    if "compiled" not in skip:
        results["compiled"] = [part("compiled sweep", 90 if gpu else 1, 150)]
    mapping = []
    if "calibrate" not in skip:
        seen = set() if gpu else set(METHODS)  # the dry run calibrates one tiny pair per method
        for method, teacher, student, gain in paper_order():
            preset = PAPER_PRESETS.get((method, teacher, student))
            if preset is None or (not gpu and method not in seen):
                continue
            seen.discard(method)
            r = part(f"calibrate {method} {preset}", 30.0 if gpu else 1.0, 75)
            results["calibrate"].append(r)
            if r:
                mapping.append(
                    {
                        "method": method,
                        "teacher": teacher,
                        "student": student,
                        "calibration": r["file"],
                        "tspipe_over_mp": gain,
                    }
                )
            # the table so far, should the run be cut off
            pd.DataFrame(mapping).to_csv(args.out / "paper_calibrations.csv", index=False)
        if not mapping:
            (args.out / "paper_calibrations.csv").unlink(missing_ok=True)
    log = write_log()
    failed = [p["part"] for p in clock.log if p["status"].startswith("failed")]
    print(
        f"[gpu_run] {log['wall_s']:.0f} s; {len(failed)} part(s) failed {failed or ''}; {args.out / 'log.json'}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
