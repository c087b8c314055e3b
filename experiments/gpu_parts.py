"""Two parts of the prepared GPU run (``experiments.gpu_run``): multi-process correctness with
every rank on one device, and compiled stages against the micro-batch penalty.

``multiproc``: 2 and 4 processes on the one GPU over the host-staged transport
(``core.runtime.hoststaged``: NCCL refuses two ranks on one device), gpipe and tspipe, fp32 and
bf16, BYOL's ``tiny`` preset for 3 steps, each compared with the same schedule on one process
and the same device (the engine's claim: the stage count changes nothing). Relative errors of
the whole student and teacher go to ``multiproc/errors.jsonl``. fp32 must agree to 1e-5; bf16
to 1e-2: bf16 keeps 8 significant bits (a rounding is up to 2^-8 = 4e-3 relative), and a
stage's kernels may pick other algorithms (another summation order) for its slice of the
network than the whole network's do, so three steps may differ by a few bf16 roundings. Step
times in this mode are not pipeline throughput (the ranks share one GPU and every message
crosses host memory twice); none are reported. The CPU dry run: 2 processes, fp32.

``compiled``: one stage holding a whole pair, per-block forward and backward over a micro-batch
sweep, eager and compiled (``torch.compile``, on CUDA ``mode="reduce-overhead"``: CUDA graphs);
the compiled sweep (micro-batch 16 and the base unit on the GPU: compiling every size
takes minutes) is written as a calibration (``experiments.calibrate --compile``: the pair
``<pair>-compiled``, so ``<pair>-compiled_mbsweep_<dtype>.json``), and ``compiled/table.md``
gives the per-sample cost at micro-batch 16 eager against compiled. The CPU dry run: KD's tiny
pair with the ``eager`` backend (dynamo traces, nothing is generated).

``python -m experiments.gpu_parts multiproc-worker SPEC.json OUT`` is one rank of ``multiproc``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from core.launch import init_distributed, launch
from core.overrides import apply_overrides
from core.profile import profile_blocks
from core.runtime import Solo, gather_state, make_runner
from experiments import calibrate
from methods.registry import get_method

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}
TINY_KD = ["method.dataset=synthetic", "method.teacher_checkpoint=random"]


def _config(device: str, schedule: str, stages: int, dtype: str, transport: str = "auto"):
    spec = get_method("byol")
    return spec, apply_overrides(
        spec.preset("tiny"),
        [
            f"run.device={device}",
            f"run.steps={STEPS}",
            f"pipeline.schedule={schedule}",
            f"pipeline.stages={stages}",
            "pipeline.microbatches=4",
            f"pipeline.amp_bf16={'true' if dtype == 'bf16' else 'false'}",
            f"pipeline.transport={transport}",
        ],
    )


def _train(device: torch.device, schedule: str, stages: int, dtype: str, transport=None) -> dict:
    spec, config = _config(device.type, schedule, stages, dtype, "host" if stages > 1 else "auto")
    setup = spec.setup(config)
    runner = make_runner(setup.task, config.pipeline, device, setup.optimizer, setup.scheduler, transport)
    runner.run(setup.batches(0, STEPS), STEPS)
    # the one-process reference runs on rank 0 alone: no gathering with the other ranks
    state = gather_state(runner.stage_state()) if stages > 1 else runner.stage_state()
    runner.close()
    return state


def _relative(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    keys = sorted(k for k in want if want[k].is_floating_point())
    a = torch.cat([got[k].double().flatten() for k in keys])
    b = torch.cat([want[k].double().flatten() for k in keys])
    return float((a - b).norm() / b.norm())


def multiproc_worker(spec_file: Path, out: Path) -> None:
    """One rank: every case over the host-staged transport; rank 0 also runs each case on one
    process (the reference) and appends the errors to ``out/errors.jsonl``."""
    cases = json.loads(spec_file.read_text())
    rank = init_distributed(cases[0]["device"], transport="host")
    torch.set_num_threads(1)
    for case in cases:
        started = time.perf_counter()
        state = _train(rank.device, case["schedule"], rank.world, case["dtype"])
        if rank.rank != 0:
            continue
        want = _train(rank.device, case["schedule"], 1, case["dtype"], Solo())
        errors = {part: _relative(state[part], want[part]) for part in ("student", "teacher")}
        tolerance = TOLERANCE[case["dtype"]]
        row = {
            **case,
            "processes": rank.world,
            "transport": "host",
            "steps": STEPS,
            "student_rel_err": errors["student"],
            "teacher_rel_err": errors["teacher"],
            "tolerance": tolerance,
            "within": max(errors.values()) <= tolerance,
            "wall_s": time.perf_counter() - started,
            "note": "host-staged: timings are not pipeline throughput",
        }
        with (out / "errors.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def multiproc(device: str, out: Path) -> dict:
    """The ``multiproc`` part (see the module docstring); returns the largest errors."""
    folder = out / "multiproc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "errors.jsonl").unlink(missing_ok=True)
    gpu = device == "cuda"
    dtypes = ("fp32", "bf16") if gpu else ("fp32",)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for world in (2, 4) if gpu else (2,):
        cases = [{"device": device, "schedule": s, "dtype": d} for s in ("gpipe", "tspipe") for d in dtypes]
        spec = folder / f"spec{world}.json"
        spec.write_text(json.dumps(cases))
        code = launch(world, ["experiments.gpu_parts", "multiproc-worker", str(spec), str(folder)], env)
        if code:
            raise RuntimeError(f"{world} processes on one {device} exited {code}")
    rows = [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]
    return {
        "cases": len(rows),
        "all_within": all(r["within"] for r in rows),
        "max_rel_err": {
            d: max(max(r["student_rel_err"], r["teacher_rel_err"]) for r in rows if r["dtype"] == d)
            for d in dtypes
        },
    }


def _per_sample_ms(costs, samples: int) -> float:
    return (
        sum(costs["teacher_fwd_ms"]) + sum(costs["student_fwd_ms"]) + sum(costs["student_bwd_ms"])
    ) / samples


def compiled(device: str, out: Path) -> dict:
    """The ``compiled`` part (see the module docstring); returns the micro-batch 16 figures."""
    gpu = device == "cuda"
    method, preset = ("byol", "resnet50-224-8gpu") if gpu else ("soft_target", "tiny")
    mode, backend = ("reduce-overhead", "inductor") if gpu else ("default", "eager")
    # compiling is slow (every block, forward and backward, once per size): on the GPU micro-batch
    # 16 and the base unit (batch / 8 = 32) only; a full sweep is ``make calibrate ARGS=--compile``
    sweep = [16]
    overrides = [] if gpu else [*TINY_KD, "pipeline.amp_bf16=false"]
    repeats = 6 if gpu else 1
    base, sweep_file = calibrate.calibrate(
        method, preset, device, sweep, repeats, overrides, compile_mode=mode, compile_backend=backend
    )
    path = calibrate.write(base, sweep_file, out / "calibration")
    # eager at micro-batch 16, the same blocks and batch
    spec = get_method(method)
    config = apply_overrides(spec.preset(preset), [f"run.device={device}", *overrides])
    setup = spec.setup(config)
    batch = next(iter(setup.batches(0, 1)))
    samples = setup.samples_per_step
    dev = torch.device(device)
    with torch.device(dev):
        eager = profile_blocks(
            setup.task, batch, samples // 16, setup.optimizer, dev, repeats, config.pipeline.amp_bf16
        )
    keep = len(eager.student_fwd) - setup.task.predictor_blocks
    eager_ms = _per_sample_ms(
        {
            "teacher_fwd_ms": eager.teacher_fwd,
            "student_fwd_ms": eager.student_fwd[:keep],
            "student_bwd_ms": eager.student_bwd[:keep],
        },
        16,
    )
    compiled_ms = _per_sample_ms(sweep_file["sweep"]["16"], 16)
    result = {
        "pair": base["pair"],
        "calibration": path.name,
        "mode": mode,
        "backend": backend,
        "microbatch": 16,
        "eager_ms_per_sample": eager_ms,
        "compiled_ms_per_sample": compiled_ms,
        "compiled_over_eager": compiled_ms / eager_ms if eager_ms else None,
    }
    folder = out / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "table.md").write_text(
        "| pair | micro-batch | eager ms/sample | compiled ms/sample | compiled / eager |\n"
        "|---|---:|---:|---:|---:|\n"
        f"| {base['pair']} ({mode}, {backend}) | 16 | {eager_ms:.4f} | {compiled_ms:.4f} | "
        f"{result['compiled_over_eager']:.2f} |\n"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["multiproc-worker"]:
        multiproc_worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m experiments.gpu_parts multiproc-worker SPEC.json OUT")
