"""Fingerprints of trained weights: what ``tests/golden/fingerprints.json`` holds and how two are
compared.

Each golden case stores, per student and teacher tensor, the sha256 of its bytes and its float64
sum and norm. On the platform that recorded them (same torch release and CPU kernel family) a
case must match bit for bit; elsewhere the kernels may round differently, so the sums and norms
are compared to a tight relative tolerance instead, and the test says so.

The golden runs pin the CPU kernels to the AVX2 family on every x86 machine that has it
(:data:`PINNED_KERNELS`: ATen's vectorised kernels, oneDNN's JIT kernels and MKL's code path).
Left to pick their own, two machines of one capability round apart: an AMD EPYC with AVX512
reproduced only 46 % of the tensors the earlier AVX512 recording held bit for bit, and the
tensors whose true gradient is zero (a key projection's bias, a LayerNorm bias before a
normalising optimiser) differed by up to 60 %, far beyond any tolerance worth testing. Pinned,
the same EPYC reproduced the AVX2 machine's recording, every tensor, bit for bit.

A machine of another kernel family (no AVX2, another architecture) keeps its own recording
beside the main one, ``fingerprints.<capability>.json``, recorded from the same code (``python
-m tests.golden.update --platform``); a case must match it bit for bit there too. The main file
alone carries the methods' digests that accuracy rows follow.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

FILE = Path(__file__).resolve().parent / "fingerprints.json"

# what the golden runs set on an x86 machine with AVX2 or better, so that every such machine
# runs the same kernels (each variable is read when torch loads, so only a new process obeys it)
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def tensor_print(t: torch.Tensor) -> list:
    """``[sha256 prefix, float64 sum, float64 norm]`` of a tensor."""
    t = t.detach().cpu().contiguous()
    raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
    as64 = t.double()
    return [hashlib.sha256(raw).hexdigest()[:16], float(as64.sum()), float(as64.norm())]


def state_print(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, list]:
    """Fingerprint of every tensor of ``{"student": state_dict, "teacher": state_dict}``."""
    return {
        f"{kind}/{key}": tensor_print(state[kind][key])
        for kind in ("student", "teacher")
        for key in sorted(state[kind])
    }


def pinned() -> bool:
    """Whether the golden runs on this machine pin the kernels (x86 with AVX2 or better)."""
    return platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() in (
        "AVX2",
        "AVX512",
    )


def kernel_env() -> dict[str, str]:
    """The environment a golden run adds on this machine: :data:`PINNED_KERNELS` or nothing."""
    return dict(PINNED_KERNELS) if pinned() else {}


def this_platform() -> dict[str, str]:
    """What decides whether two golden runs can be expected to agree bit for bit: the torch
    release and the kernels the runs use (AVX2 where they are pinned)."""
    return {
        "torch": torch.__version__,
        "cpu_capability": "AVX2" if pinned() else torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def method_digests(cases: dict[str, dict[str, list]]) -> dict[str, str]:
    """One digest per method over the hashes of all its cases (``method/schedule`` names): an
    accuracy row stays current while its method's digest does."""
    out: dict[str, hashlib._Hash] = {}
    for name in sorted(cases):
        method = name.split("/")[0]
        h = out.setdefault(method, hashlib.sha256())
        for key in sorted(cases[name]):
            h.update(f"{name}|{key}|{cases[name][key][0]}\n".encode())
    return {m: h.hexdigest()[:16] for m, h in out.items()}


def load(path: Path = FILE) -> dict:
    return json.loads(path.read_text())


def platform_file(path: Path = FILE) -> Path:
    """The recording of this machine's CPU kernel family beside the main file."""
    return path.with_name(f"{path.stem}.{this_platform()['cpu_capability']}.json")


def reference(path: Path = FILE) -> tuple[dict[str, dict[str, list]], bool]:
    """The cases this machine must reproduce and whether bit for bit: the main file's on its own
    platform, else this platform's recording where there is one, else the main file's, to a
    tolerance."""
    main = load(path)
    if main["platform"] == this_platform():
        return main["cases"], True
    own = platform_file(path)
    if own.exists():
        data = load(own)
        if data["platform"] == this_platform():
            return data["cases"], True
    return main["cases"], False


def save_platform(cases: dict[str, dict[str, list]], path: Path = FILE) -> Path:
    """Record ``cases`` as this platform's own fingerprints (no digests: see the module doc)."""
    out = platform_file(path)
    data = {"platform": this_platform(), "cases": cases}
    out.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    return out


def save(cases: dict[str, dict[str, list]], path: Path = FILE) -> dict:
    data = {"platform": this_platform(), "methods": method_digests(cases), "cases": cases}
    path.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    return data
