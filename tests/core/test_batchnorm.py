"""Deferred BatchNorm: micro-batch normalisation, one full-batch running-statistics update."""

import copy

import pytest
import torch
from torch import nn

from core.batchnorm import DeferredBatchNorm, commit_all, convert_deferred, deferred_layers


@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(30, 4), (30, 4, 5, 5)])
def test_running_stats_equal_a_full_batch_update(chunks, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    full = nn.BatchNorm2d(4) if len(shape) == 4 else nn.BatchNorm1d(4)
    deferred = convert_deferred(copy.deepcopy(full))
    full.train()(x)
    for part in torch.tensor_split(x, chunks):
        deferred(part)
    assert torch.equal(deferred.running_mean, torch.zeros(4))  # nothing moves before the commit
    commit_all(deferred)
    torch.testing.assert_close(deferred.running_mean, full.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(deferred.running_var, full.running_var, rtol=1e-6, atol=1e-7)
    assert int(deferred.num_batches_tracked) == 1


def test_normalises_with_micro_batch_statistics():
    torch.manual_seed(1)
    x = torch.randn(8, 3)
    plain = nn.BatchNorm1d(3).train()
    deferred = convert_deferred(copy.deepcopy(plain))
    for part in torch.tensor_split(x, 2):
        torch.testing.assert_close(deferred(part), plain(part))


def test_eval_uses_running_statistics_and_accumulation_can_be_off():
    layer = DeferredBatchNorm(2)
    layer.running_mean.fill_(1.0)
    layer.eval()
    assert torch.allclose(layer(torch.ones(4, 2)), torch.zeros(4, 2), atol=1e-6)
    layer.train()
    layer.accumulate = False
    layer(torch.randn(4, 2))
    commit_all(layer)
    assert int(layer.num_batches_tracked) == 0


def test_convert_replaces_nested_layers_and_keeps_weights():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2)), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[1][0].weight.fill_(3.0)
        model[1][0].running_var.fill_(2.0)
    convert_deferred(model)
    layers = deferred_layers(model)
    assert len(layers) == 2
    assert torch.equal(layers[0].weight, torch.full((2,), 3.0))
    assert torch.equal(layers[0].running_var, torch.full((2,), 2.0))
    assert "_sum" not in model.state_dict() and "1.0.running_mean" in model.state_dict()


def test_a_compiled_forward_accumulates_like_an_eager_one():
    # torch 2.11's compiled forwards dropped in-place updates of 0-dim buffers: with the count
    # 0-dim, the sums grew but the count stayed 0 and the commit moved nothing
    torch.manual_seed(2)
    x = torch.randn(16, 4, 3, 3)
    eager = DeferredBatchNorm(4)
    compiled_layer = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_layer, backend="aot_eager")
    for part in x.split(8):
        eager(part)
        compiled(part)
    assert float(compiled_layer._count) == float(eager._count) == 16 * 9
    commit_all(eager)
    commit_all(compiled_layer)
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
