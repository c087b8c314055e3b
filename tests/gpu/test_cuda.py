"""CUDA-only checks the prepared GPU run (``make gpu-check``) runs there; skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from core.overrides import apply_overrides
from core.runtime import make_runner
from methods.registry import get_method

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _train(device: str, amp: bool, steps: int = 3) -> tuple[list[float], dict]:
    spec = get_method("byol")
    config = apply_overrides(
        spec.preset("tiny"),
        [
            f"run.device={device}",
            f"pipeline.amp_bf16={str(amp).lower()}",
            "pipeline.schedule=sequential",
            "pipeline.stages=1",
            "pipeline.microbatches=1",
            f"run.steps={steps}",
        ],
    )
    setup = spec.setup(config)
    torch.manual_seed(0)
    runner = make_runner(setup.task, config.pipeline, torch.device(device), setup.optimizer, setup.scheduler)
    log = runner.run(setup.batches(0, steps), steps)
    state = runner.stage_state()
    runner.close()
    return [float(x["loss"]) for x in log.losses], state


def test_cuda_fp32_step_matches_cpu():
    """3 fp32 steps on the GPU equal the CPU's (TF32 off) to 1e-3 relative: the same model,
    data and initial weights; only kernel order differs. The H200 run (results/gpu/first-run)
    found the third step's loss 2.5e-4 apart, over the 1e-4 first set here: cuDNN's
    convolution and batch-norm kernels sum in another order, and three steps of training grow
    the difference. The 1e-3 bound has not run on a GPU yet."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cpu_losses, cpu_state = _train("cpu", False)
    gpu_losses, gpu_state = _train("cuda", False)
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-3)
    for block, tensors in cpu_state.items():
        for name, value in tensors.items():
            if value.is_floating_point():
                torch.testing.assert_close(gpu_state[block][name], value, rtol=1e-3, atol=1e-4)


def test_bf16_training_runs_and_learns():
    losses, _ = _train("cuda", True, steps=8)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
