"""The host-staged transport (ranks sharing a GPU talk over gloo through host memory): on CPU
the same path runs with CPU tensors, and a pipeline over it trains bit for bit like one over the
direct transport; ``transport=auto`` picks it only when CUDA ranks outnumber the GPUs."""

from __future__ import annotations

import json

import pytest
import torch

from core.config import PipelineConfig
from core.runtime.hoststaged import choose_transport
from tests.conftest import launch_module

STEPS = 3
SHAPES = [("gpipe", "ema", 2), ("tspipe", "ema", 2), ("tspipe", "frozen", 2)]


def cases() -> list[dict]:
    out = []
    for schedule, teacher, micro in SHAPES:
        for transport in ("direct", "host"):
            out.append(
                dict(
                    name=f"{schedule}_{teacher}_{transport}",
                    schedule=schedule,
                    teacher=teacher,
                    microbatches=micro,
                    steps=STEPS,
                    transport=transport,
                    max_grad_norm=0.05,  # the clipping all-reduce goes through the host too
                )
            )
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("hoststaged")
    spec = folder / "spec.json"
    spec.write_text(json.dumps(cases()))
    proc = launch_module("tests.core.dist_worker", 2, str(spec), str(folder), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {c["name"]: torch.load(folder / f"{c['name']}.pt") for c in cases()}


@pytest.mark.dist
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "_".join(map(str, s)))
def test_host_staged_equals_direct_bit_for_bit(world2, shape):
    schedule, teacher, _ = shape
    direct, host = world2[f"{schedule}_{teacher}_direct"], world2[f"{schedule}_{teacher}_host"]
    assert (direct["transport"], host["transport"]) == ("TorchTransport", "HostStagedTransport")
    for part in ("student", "teacher"):
        assert sorted(direct[part]) == sorted(host[part])
        for key, value in direct[part].items():
            assert torch.equal(host[part][key], value), (part, key)


def test_auto_is_host_only_when_cuda_ranks_share_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_transport("auto", "cuda", 2) == "direct"
    assert choose_transport("auto", "cuda", 4) == "host"
    assert choose_transport("auto", "cpu", 4) == "direct"
    assert choose_transport("direct", "cuda", 4) == "direct"
    assert choose_transport("host", "cpu", 2) == "host"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert choose_transport("auto", "cuda", 2) == "host"


def test_transport_values_are_checked():
    assert PipelineConfig().transport == "auto"
    assert PipelineConfig(schedule="gpipe", stages=2, transport="host").transport == "host"
    with pytest.raises(ValueError, match="transport must be one of auto, direct, host"):
        PipelineConfig(transport="nccl")
    with pytest.raises(ValueError, match="transport=host carries pipeline messages"):
        PipelineConfig(schedule="ddp", stages=2, transport="host")
