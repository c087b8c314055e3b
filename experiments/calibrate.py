"""Calibrate a teacher/student pair on this machine: per-block costs at a micro-batch sweep, the
whole networks and one sequential step at the full batch, and peak memory, written in the format
of ``experiments/calibration/h200`` (its README), so ``core.calibration`` and the simulator read
the files as they read the H200 ones.

For a method and one of its presets (the paper presets on a GPU, ``tiny`` on a CPU):

- ``<pair>_<dtype>.json``: per-block costs at ``batch / 8`` samples (the H200 files' unit),
  their output shapes, the whole teacher forward, student forward and forward+backward and the
  teacher update at the full batch, one sequential step (teacher forward, student forward and
  backward, optimizer step, teacher update), parameters and peak memory;
- ``<pair>_mbsweep_<dtype>.json``: the per-block costs at every size of ``--sweep``;
- ``summary.json``: one entry per calibrated pair and dtype (replaced when calibrated again).

A student's predictor (BYOL's), which an EMA teacher lacks, is reported apart
(``predictor_blocks``), so the teacher's and the student's block lists mirror each other; the
whole-network figures and the step include it.

SSL pairs (BYOL, MoCo-v3) are timed on one view, as the H200 files are: their mini-batch costs
twice the figures. Blocks are timed alone (``core.profile.profile_blocks``: a device sync around
each, median of ``--repeats``); the backward is taken from a gradient of ones on the block's
output, the whole-network backward likewise (the loss itself is left out). Inputs are the
method's first batch (synthetic for the paper presets: no downloads).

With ``--compile MODE`` the blocks and whole networks are timed compiled (``torch.compile``, as
``pipeline.compile`` runs stages) and the pair is named with a ``-compiled`` suffix, so its files
sit beside the eager ones (``<pair>-compiled_mbsweep_<dtype>.json``).

``python -m experiments.calibrate --method byol --preset resnet50-224-8gpu --device cuda``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.calibration import load_calibration
from core.config import COMPILE_MODES
from core.momentum import ema_update_
from core.overrides import ConfigError, apply_overrides
from core.profile import BlockCosts, _median_ms, profile_blocks
from core.runtime import prepare_models
from core.runtime.compiled import compile_module, recompile_room
from core.task import detached_leaves, map_structure, tensors
from methods.registry import get_method

ROOT = Path(__file__).resolve().parent.parent
# the pair name's prefix says the method (core.calibration.Calibration.method)
PREFIX = {"byol": "byol", "moco_v3": "mocov3", "soft_target": "kd", "distilbert": "distil"}
UNIT_DIVISOR = 8  # per-block costs of the base file at batch / 8 samples, as the H200 files


def pair_name(method: str, preset: str) -> str:
    """Default pair name: the method's prefix and the preset, e.g. ``byol_resnet50-224-8gpu``."""
    return f"{PREFIX[method]}_{preset.replace('_', '-')}"


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    """Median milliseconds of ``fn`` over ``repeats`` calls (CUDA events on a GPU)."""

    def cuda_ms(fn: Callable[[], Any], repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return cuda_ms if device.type == "cuda" else _median_ms


def _shapes(blocks: Sequence[nn.Module], x: Any, amp_bf16: bool, device: torch.device) -> list[list[int]]:
    """Each block's output as ``[samples, elements per sample]`` (all its tensors together)."""
    out = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16):
        for block in blocks:
            x = block(x)
            first = tensors(x)[0]
            out.append([int(first.shape[0]), sum(t.numel() for t in tensors(x)) // int(first.shape[0])])
    return out


def whole_network(
    task: Any,
    batch: Any,
    optimizer_factory: Callable,
    device: torch.device,
    amp_bf16: bool,
    repeats: int,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> dict[str, float]:
    """Whole-network costs of one view of the full batch and one sequential step, in ms, and the
    step's peak memory (GiB; None on a CPU); with ``compile_mode``, both networks' forwards
    compiled (``torch.compile``)."""
    student, teacher = prepare_models(task)
    s_net, t_net = nn.Sequential(*student).to(device), nn.Sequential(*teacher).to(device)
    s_run = compile_module(s_net, compile_mode or "none", compile_backend)
    t_run = compile_module(t_net, compile_mode or "none", compile_backend)
    s_views, t_views = task.split_inputs(batch, 0)
    to_dev = lambda x: map_structure(lambda t: t.to(device), x)  # noqa: E731
    s_in, t_in = to_dev(s_views[0]), to_dev(t_views[0])
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16)  # noqa: E731
    optimizer = optimizer_factory(list(s_net.named_parameters()))
    ema = task.teacher_rule.kind == "ema"
    timed = _timer(device)

    def teacher_fwd():
        with torch.no_grad(), autocast():
            return t_run(t_in)

    def student_fwd():
        with torch.no_grad(), autocast():
            return s_run(s_in)

    def student_fwdbwd():
        with autocast():
            outs = [t for t in tensors(s_run(detached_leaves(s_in))) if t.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])

    def update():
        if ema:
            ema_update_(t_net, s_net, 0.99)

    def step():
        teacher_fwd()
        student_fwdbwd()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update()

    for fn in (teacher_fwd, student_fwd, student_fwdbwd, update, step):
        fn()  # warm-up (allocator, kernels, optimizer state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    out: dict[str, Any] = {
        "teacher_fwd_ms": timed(teacher_fwd, repeats),
        "student_fwd_ms": timed(student_fwd, repeats),
        "student_fwdbwd_ms": timed(student_fwdbwd, repeats),
        "ema_ms": timed(update, repeats) if ema else 0.0,
        "seq_step_ms": timed(step, repeats),
        "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "teacher_params_M": sum(p.numel() for p in t_net.parameters()) / 1e6,
        "student_params_M": sum(p.numel() for p in s_net.parameters()) / 1e6,
    }
    return out


def calibrate(
    method: str,
    preset: str,
    device: str = "cpu",
    sweep: Sequence[int] | None = None,
    repeats: int = 6,
    overrides: Sequence[str] = (),
    pair: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> tuple[dict, dict]:
    """Measure a pair (see the module docstring).

    Args:
        method, preset: what to build (the preset's ``amp_bf16`` sets the dtype).
        device: ``cpu`` or ``cuda``.
        sweep: micro-batch sizes (samples per unit); each must divide the batch. None: powers of
            two from 8 up to the batch, and the base unit ``batch / 8``.
        repeats: timed repeats per measurement (median).
        overrides: ``key=value`` config overrides, as the other drivers take.
        pair: the pair's name; its prefix must say the method (``byol``, ``mocov3``, ``kd``,
            ``distil``). None: :func:`pair_name`.
        progress: called with a line before each measurement.
        compile_mode: time blocks and whole networks compiled (``torch.compile`` mode, as
            ``pipeline.compile``); the pair's name gets a ``-compiled`` suffix. None: eager.
        compile_backend: the ``torch.compile`` backend when compiling.

    Returns:
        (base file, sweep file) contents.

    Raises:
        ValueError: for a pair name of another method or a sweep size that does not divide the batch.
    """
    spec = get_method(method)
    name = pair or pair_name(method, preset) + ("-compiled" if compile_mode else "")
    if not name.startswith(PREFIX.get(method, "\0")):
        raise ValueError(f"pair {name!r} must start with {PREFIX.get(method)!r} (the method's prefix)")
    config = apply_overrides(spec.preset(preset), [f"run.device={device}", *overrides])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no GPU")
    amp = bool(config.pipeline.amp_bf16)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    setup = spec.setup(config)
    batch = next(iter(setup.batches(0, 1)))
    samples = setup.samples_per_step
    unit = max(samples // UNIT_DIVISOR, 1)
    sizes = sorted({*(sweep or [s for s in (8, 16, 32, 64, 128, 256) if s <= samples]), unit})
    bad = [s for s in sizes if samples % s]
    if bad:
        raise ValueError(f"micro-batch sizes {bad} do not divide the batch of {samples}")
    started = time.perf_counter()
    profiles: dict[int, BlockCosts] = {}
    # models are built anew for each measurement; built on the device, a large one initialises in
    # a fraction of the time it takes on the CPU
    with torch.device(dev):
        for size in sizes:
            progress(f"blocks at {size} samples per unit")
            profiles[size] = profile_blocks(
                setup.task,
                batch,
                samples // size,
                setup.optimizer,
                dev,
                repeats,
                amp,
                compile_mode,
                compile_backend,
            )
        progress("whole networks and one sequential step")
        with recompile_room():
            whole = whole_network(
                setup.task, batch, setup.optimizer, dev, amp, repeats, compile_mode, compile_backend
            )
        student, teacher = prepare_models(setup.task)
    s_views, t_views = setup.task.split_inputs(batch, 0)
    first = lambda x: map_structure(lambda t: t[:unit].to(dev), x)  # noqa: E731
    base = profiles[unit]
    # the calibration format mirrors an EMA teacher's blocks: a predictor is reported on its own
    keep = len(base.student_fwd) - setup.task.predictor_blocks
    seq = whole["seq_step_ms"]
    work = whole["teacher_fwd_ms"] + whole["student_fwdbwd_ms"] + whole["ema_ms"]
    out = {
        "pair": name,
        "method": method,
        "preset": preset,
        "batch": samples,
        "amp_bf16": amp,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "compile": compile_mode,
        "compile_backend": compile_backend if compile_mode else None,
        **{k: whole[k] for k in ("teacher_params_M", "student_params_M")},
        **{k: whole[k] for k in ("teacher_fwd_ms", "student_fwd_ms", "student_fwdbwd_ms", "ema_ms")},
        "seq_step_ms": seq,
        "seq_samples_per_s": samples / seq * 1e3,
        "bubble_free_bound_samples_per_s_per_gpu": samples / work * 1e3,
        "microbatch": unit,
        "teacher_blocks": {
            "fwd_ms": base.teacher_fwd,
            "out_shape": _shapes([b.to(dev) for b in teacher], first(t_views[0]), amp, dev),
        },
        "student_blocks": {
            "fwd_ms": base.student_fwd[:keep],
            "bwd_ms": base.student_bwd[:keep],
            "bwd_input_ms": base.student_bwd_input[:keep],
            "out_shape": _shapes([b.to(dev) for b in student], first(s_views[0]), amp, dev)[:keep],
        },
        "predictor_blocks": {"fwd_ms": base.student_fwd[keep:], "bwd_ms": base.student_bwd[keep:]},
        "peak_mem_GiB": whole["peak_mem_GiB"],
        "repeats": repeats,
        "wall_s": time.perf_counter() - started,
    }
    sweep_out = {
        "pair": name,
        "amp_bf16": amp,
        "device": out["device"],
        "torch": torch.__version__,
        "sweep": {
            str(size): {
                "teacher_fwd_ms": p.teacher_fwd,
                "student_fwd_ms": p.student_fwd[:keep],
                "student_bwd_ms": p.student_bwd[:keep],
            }
            for size, p in profiles.items()
        },
    }
    return out, sweep_out


def write(base: dict, sweep: dict, out: Path) -> Path:
    """Write the base and sweep files and update ``summary.json`` under ``out``; check that
    ``core.calibration`` reads them back.

    Returns:
        The base file's path.
    """
    out.mkdir(parents=True, exist_ok=True)
    dtype = "bf16" if base["amp_bf16"] else "fp32"
    path = out / f"{base['pair']}_{dtype}.json"
    path.write_text(json.dumps(base, indent=1) + "\n")
    (out / f"{base['pair']}_mbsweep_{dtype}.json").write_text(json.dumps(sweep, indent=1) + "\n")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else []
    entry = {k: v for k, v in base.items() if k not in ("teacher_blocks", "student_blocks")}
    summary = [e for e in summary if (e["pair"], e["amp_bf16"]) != (base["pair"], base["amp_bf16"])]
    summary_path.write_text(json.dumps([*summary, entry], indent=1) + "\n")
    load_calibration(path)  # raises if the files do not read back
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=sorted(PREFIX))
    parser.add_argument("--preset", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", default=None, help="comma-separated samples per unit (default: 8..256)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--pair", default=None, help="pair name (default: method prefix + preset)")
    parser.add_argument("--out", default="results/calibration", help="folder for the files")
    parser.add_argument(
        "--compile",
        default=None,
        choices=[m for m in COMPILE_MODES if m != "none"],
        help="time the blocks compiled with this torch.compile mode (pair name gets -compiled)",
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tests)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        sweep = [int(s) for s in args.sweep.split(",")] if args.sweep else None
        base, sweep_file = calibrate(
            args.method,
            args.preset,
            args.device,
            sweep,
            args.repeats,
            args.overrides,
            args.pair,
            progress=lambda line: print(f"[calibrate] {line}", file=sys.stderr, flush=True),
            compile_mode=args.compile,
            compile_backend=args.compile_backend,
        )
        path = write(base, sweep_file, Path(args.out))
    except (ConfigError, ValueError) as err:
        print(f"calibrate: {err}", file=sys.stderr)
        return 2
    print(
        f"{path}: sequential step {base['seq_step_ms']:.1f} ms per view, "
        f"{base['seq_samples_per_s']:.1f} samples/s, in {base['wall_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
