"""Shared method pieces: ViT and ResNet blocks, data order, IDX files, kNN, config parsing."""

import gzip
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch

from core.overrides import ConfigError, apply_overrides
from methods.common.data import BatchOrder, read_idx, to_rgb
from methods.common.knn import knn_accuracy
from methods.common.resnet import resnet_blocks
from methods.common.vit import vit_blocks


@pytest.mark.parametrize("half", [False, True])
def test_vit_units_compute_the_timm_model(half):
    torch.manual_seed(0)
    units, dim = vit_blocks("vit_tiny_patch16_224", img_size=32, patch_size=4, half_blocks=half, depth=3)
    torch.manual_seed(0)
    ref = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=3, num_classes=0
    )
    x = torch.randn(2, 3, 32, 32)
    y = x
    for unit in units:
        y = unit(y)
    assert len(units) == 2 + 3 * (2 if half else 1) and dim == 192
    torch.testing.assert_close(y, ref(x))
    assert sum(p.numel() for u in units for p in u.parameters()) == sum(p.numel() for p in ref.parameters())


def test_frozen_patch_projection():
    units, _ = vit_blocks(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1, frozen_patch_projection=True
    )
    assert not any(p.requires_grad for p in units[0].vit.patch_embed.parameters())


def test_resnet_blocks_shapes():
    blocks, features = resnet_blocks(18, width=8, cifar_stem=True)
    assert len(blocks) == 1 + 8 and features == 64
    x = torch.randn(2, 3, 32, 32)
    for b in blocks:
        x = b(x)
    assert x.shape == (2, 64, 4, 4)
    blocks50, features50 = resnet_blocks(50, width=8, cifar_stem=False)
    assert len(blocks50) == 1 + 16 and features50 == 8 * 8 * 4
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet_blocks(20)


def test_batch_order_is_deterministic_and_covers_each_epoch():
    order = BatchOrder(10, 3, seed=1)
    assert order.steps_per_epoch == 3
    first = torch.cat(list(order.iterate(0, 3)))
    assert len(set(first.tolist())) == 9
    assert torch.equal(torch.cat(list(order.iterate(0, 6))), torch.cat(list(order.iterate(0, 6))))
    assert torch.equal(next(iter(order.iterate(4, 1))), order.indices(4))
    with pytest.raises(ValueError):
        BatchOrder(5, 6)


def test_read_idx(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = (
        (0x0803).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape) + data.tobytes()
    )
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    assert np.array_equal(read_idx(path), data)


def test_to_rgb_pads_28_to_32():
    x = to_rgb(torch.full((1, 28, 28), 255, dtype=torch.uint8), 32)
    assert x.shape == (1, 3, 32, 32) and x[0, 0, 0, 0] == 0 and x[0, 0, 2, 2] == 1


def test_knn_votes_by_similarity():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    test = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1]), k=1) == 1.0
    assert knn_accuracy(train, labels, test, torch.tensor([1, 0]), k=1) == 0.0


@dataclass(frozen=True)
class Small:
    a: int = 1
    b: float = 0.5
    c: bool = False
    d: str = "x"
    e: int | None = None


def test_apply_overrides_coerces_and_rejects():
    cfg = apply_overrides(Small(a=2), ["b=0.25", "c=true", "d=y", "e=none"])
    assert cfg == Small(2, 0.25, True, "y", None)
    assert apply_overrides(Small(), ["e=3"]).e == 3
    for bad, message in (
        (["zz=1"], "unknown config key"),
        (["a=x"], "expected int"),
        (["c=maybe"], "true or false"),
        (["a"], "not key=value"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(Small(), bad)
