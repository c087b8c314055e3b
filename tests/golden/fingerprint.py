"""Fingerprints of trained weights: what ``tests/golden/fingerprints.json`` holds and how two are
compared.

Each golden case stores, per student and teacher tensor, the sha256 of its bytes and its float64
sum and norm. On the platform that recorded them (same torch release and CPU kernel family) a
case must match bit for bit; elsewhere the kernels may round differently, so the sums and norms
are compared to a tight relative tolerance instead, and the test says so.

A machine of another CPU kernel family (AVX2 against AVX512: BatchNorm's sums and matmuls round
differently by a few 1e-5 after 3 steps) keeps its own recording beside the main one,
``fingerprints.<capability>.json``, recorded from the same code (``python -m tests.golden.update
--platform``); a case must match it bit for bit there too. The main file alone carries the
methods' digests that accuracy rows follow.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

FILE = Path(__file__).resolve().parent / "fingerprints.json"


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


def this_platform() -> dict[str, str]:
    """What decides whether two runs can be expected to agree bit for bit."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
