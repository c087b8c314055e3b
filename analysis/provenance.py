"""Where result rows come from and whether they still hold: the code each source depends on,
and the state of each ``git_sha`` against the current tree (accuracy rows follow their
method's numerics fingerprint in ``tests/golden`` instead)."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "fingerprints.json"
# code whose change makes a throughput source's rows stale (accuracy rows follow the method's
# numerics fingerprint instead, see ``staleness``)
_METHOD_CODE = ["core", "methods/common", "methods/spec.py", "methods/registry.py"]
SIMULATED_CODE = ["core", "experiments/simulate.py", "experiments/calibration"]
# what ``make bench-micro`` times: the engine on the synthetic method, through ``benchmarks``
MICRO_CODE = [*_METHOD_CODE, "methods/synthetic", "benchmarks"]


def code_paths(key: str, rows: pd.DataFrame) -> list[str]:
    """The code a source's rows depend on: the engine, the method's folder and the driver."""
    if key == "simulated":
        return SIMULATED_CODE
    methods = sorted({str(m) for m in rows["method"]})
    driver = [
        "training",
        "experiments/accuracy.py",
        "experiments/accuracy_kd.py",
        "experiments/accuracy_distilbert.py",
    ]
    if key.endswith("/staleness"):
        driver = ["training", "experiments/accuracy.py", "experiments/staleness.py"]
    elif key.endswith("/hybrid"):
        driver = ["experiments/bench.py", "experiments/drift.py", "experiments/bench_hybrid.py"]
    elif not key.endswith("/accuracy"):
        driver = ["experiments/bench.py", "experiments/drift.py"]
    return [*_METHOD_CODE, *(f"methods/{m}" for m in methods), *driver]


def golden_digests(path: Path = GOLDEN) -> dict[str, str]:
    """Each method's current numerics fingerprint (``tests/golden``), or {} without the file."""
    return json.loads(path.read_text())["methods"] if path.exists() else {}


@functools.lru_cache(maxsize=256)
def digests_at(sha: str, repo: Path) -> dict[str, str]:
    """Each method's numerics fingerprint as recorded at commit ``sha`` ({} where that commit
    has no fingerprint file or is unknown); cached, since a matrix asks once per row and a
    commit's file never changes (do not mutate the result)."""
    base = sha.removesuffix("+dirty")
    shown = _git("show", f"{base}:tests/golden/fingerprints.json", repo=repo)
    if shown.returncode != 0:
        return {}
    return json.loads(shown.stdout).get("methods", {})


def _git(*args: str, repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def staleness(
    rows: pd.DataFrame, paths: Sequence[str], repo: Path, digests: dict[str, str] | None = None
) -> dict[str, str]:
    """For each distinct ``git_sha`` of ``rows``: ``current``, ``stale`` (the code in ``paths``
    changed since), ``made from uncommitted code`` or ``unknown``. Rows that carry their
    method's numerics ``fingerprint`` (accuracy rows) are judged by it instead: ``current``
    while it equals the method's digest in ``digests`` and the one recorded at the rows' own
    commit (so a fingerprint stamped on older rows vouches for nothing), stale otherwise."""
    out = {}
    shas = rows["git_sha"].map(str)
    for sha in sorted(set(shas)):
        group = rows[shas == sha]
        printed = (
            group["fingerprint"].notna() if "fingerprint" in group else pd.Series(False, index=group.index)
        )
        base = sha.removesuffix("+dirty")
        known = sha != "None" and _git("cat-file", "-e", f"{base}^{{commit}}", repo=repo).returncode == 0
        if digests is not None and len(group) and printed.all() and (not known or sha.endswith("+dirty")):
            out[sha] = "unknown commit" if not known else "made from uncommitted code"
            continue
        if digests is not None and len(group) and printed.all():
            pairs = set(zip(group["method"].map(str), group["fingerprint"].map(str)))
            if any(digests.get(m) != f for m, f in pairs):
                out[sha] = "stale: numerics changed"
            elif any(digests_at(sha, repo).get(m) != f for m, f in pairs):
                # the fingerprint was stamped on rows its code did not make: nothing vouches for them
                out[sha] = "stale: its commit had another numerics fingerprint"
            else:
                out[sha] = "current (numerics fingerprint)"
            continue
        base = sha.removesuffix("+dirty")
        if sha == "None" or _git("cat-file", "-e", f"{base}^{{commit}}", repo=repo).returncode != 0:
            out[sha] = "unknown commit"
            continue
        changed = _git("diff", "--quiet", base, "HEAD", "--", *paths, repo=repo).returncode != 0
        if changed:
            out[sha] = "stale: code changed since"
        elif sha.endswith("+dirty"):
            out[sha] = "made from uncommitted code"
        else:
            out[sha] = "current"
    return out
