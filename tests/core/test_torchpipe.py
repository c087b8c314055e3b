"""The torch peer's guard around ``PipelineStage``'s shape inference: torch 2.11 infers a stage's
output shapes by running its module once on zeros without gradients and restores nothing, so the
peer undoes what such a forward does to the student's buffers and the random state. The
equivalence tests in ``test_runtime_dist.py`` catch the rest, on releases that show the bug."""

from __future__ import annotations

import torch
from torch import nn

from core.batchnorm import DeferredBatchNorm
from core.runtime.torchpipe import shield_shape_inference


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), DeferredBatchNorm(4), nn.Dropout(0.5)).train()


def state(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in module.buffers()]


def test_a_forward_without_gradients_leaves_buffers_and_random_state_as_they_were():
    module = student()
    handles = shield_shape_inference(module, torch.device("cpu"))
    module(torch.randn(8, 4)).sum().backward()  # a real forward: counted
    before, rng = state(module), torch.get_rng_state()
    assert float(module[1]._count) == 8
    with torch.no_grad():
        module(torch.zeros(8, 4))  # what 2.11's shape inference runs
    assert all(torch.equal(a, b) for a, b in zip(state(module), before))
    assert torch.equal(torch.get_rng_state(), rng)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        module(torch.zeros(8, 4))  # once removed, a forward counts again
    assert float(module[1]._count) == 16


def test_a_training_forward_is_untouched():
    plain, shielded = student(), student()
    shield_shape_inference(shielded, torch.device("cpu"))
    x = torch.randn(8, 4)
    torch.manual_seed(1)
    a = plain(x)
    torch.manual_seed(1)
    b = shielded(x)
    assert torch.equal(a, b)  # the same dropout mask: the random state was not reset
    assert all(torch.equal(p, q) for p, q in zip(state(plain), state(shielded)))
