"""Numerics pinned: every method under every schedule and runner reproduces its recorded
fingerprint (a hash of every trained student and teacher tensor) after 3 fp32 steps.

A change that moves code around must leave every fingerprint unchanged, bit for bit. A change
that is meant to change the numerics re-records them (``python -m tests.golden.update``), and
the accuracy rows of the methods whose digest changed become stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import launch_module
from tests.golden import fingerprint
from tests.golden.cases import cases

GOLDEN = fingerprint.load()
REFERENCE, EXACT = fingerprint.reference()


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def measured(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "prints.json"
    proc = launch_module(
        "tests.golden.worker", request.param, str(out), timeout=600, env=fingerprint.kernel_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return request.param, json.loads(out.read_text())


@pytest.mark.dist
def test_every_case_reproduces_its_fingerprint(measured):
    world, got = measured
    names = [c["name"] for c in cases(world)]
    assert sorted(got) == sorted(names)
    for name in names:
        want = REFERENCE[name]
        assert sorted(got[name]) == sorted(want), f"{name}: different tensors"
        for key, (sha, total, norm) in want.items():
            g_sha, g_total, g_norm = got[name][key]
            if EXACT:
                assert g_sha == sha, f"{name} {key}: not bit-identical to the recorded run"
            else:  # other kernels round differently: agree to float32 rounding of a 3-step run
                assert g_norm == pytest.approx(norm, rel=1e-5, abs=1e-6), f"{name} {key}"
                assert g_total == pytest.approx(total, rel=1e-4, abs=1e-4 * max(norm, 1.0)), f"{name} {key}"


def test_method_digests_match_the_cases():
    assert fingerprint.method_digests(GOLDEN["cases"]) == GOLDEN["methods"]
    assert {c["method"] for w in (1, 2) for c in cases(w)} == set(GOLDEN["methods"])


def test_reference_is_bit_exact_only_on_a_recorded_platform(tmp_path, monkeypatch):
    here = {"torch": "t", "cpu_capability": "AVX512", "machine": "x86_64"}
    other = dict(here, cpu_capability="AVX2")
    monkeypatch.setattr(fingerprint, "this_platform", lambda: here)
    main = tmp_path / "fingerprints.json"
    main.write_text(json.dumps({"platform": other, "methods": {}, "cases": {"a": {"k": ["main", 1.0, 1.0]}}}))
    assert fingerprint.reference(main) == ({"a": {"k": ["main", 1.0, 1.0]}}, False)
    own = {"a": {"k": ["own", 1.0, 1.0]}}
    fingerprint.platform_file(main).write_text(json.dumps({"platform": here, "cases": own}))
    assert fingerprint.platform_file(main).name == "fingerprints.AVX512.json"
    assert fingerprint.reference(main) == (own, True)
    monkeypatch.setattr(fingerprint, "this_platform", lambda: other)
    assert fingerprint.reference(main) == ({"a": {"k": ["main", 1.0, 1.0]}}, True)


def test_a_golden_run_on_an_x86_machine_with_avx2_or_better_uses_the_avx2_kernels():
    if not fingerprint.pinned():
        pytest.skip("the kernels are pinned on x86 machines with AVX2 or better only")
    proc = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env={**os.environ, **fingerprint.kernel_env()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "AVX2" == fingerprint.this_platform()["cpu_capability"]
