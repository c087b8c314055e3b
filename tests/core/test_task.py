"""Micro-batch scatter and gather of tensors and dicts; message headers."""

import pytest
import torch

from core.runtime.transport import HEADER, decode_header, encode_header
from core.task import detached_leaves, gather, scatter, sizes, split_like, unit_slices


def test_tensor_round_trip():
    x = torch.arange(10).reshape(5, 2)
    parts = scatter(x, 3)
    assert [p.shape[0] for p in parts] == [2, 2, 1]
    assert torch.equal(gather(parts), x)


def test_dict_round_trip():
    x = {"ids": torch.arange(12).reshape(4, 3), "mask": torch.ones(4, 3, dtype=torch.bool)}
    parts = scatter(x, 2)
    assert set(parts[0]) == {"ids", "mask"} and parts[1]["ids"].shape == (2, 3)
    back = gather(parts)
    assert all(torch.equal(back[k], x[k]) for k in x)


def test_scatter_refuses_tiny_batches():
    with pytest.raises(ValueError, match="cannot split a batch of 2 samples into 3"):
        scatter(torch.zeros(2, 1), 3)


def test_split_like_handles_entries_of_different_lengths():
    pieces = [
        {"logits": torch.zeros(3, 2), "hidden": torch.zeros(2, 4)},
        {"logits": torch.ones(1, 2), "hidden": torch.ones(2, 4)},
    ]
    whole = gather(pieces)
    back = split_like(whole, [sizes(p) for p in pieces])
    assert back[1]["logits"].shape == (1, 2) and torch.equal(back[1]["hidden"], torch.ones(2, 4))


def test_unit_slices_match_scatter():
    x = torch.arange(11)
    for m in range(1, 6):
        assert [x[s].tolist() for s in unit_slices(11, m)] == [p.tolist() for p in scatter(x, m)]


def test_detached_leaves_require_grad_only_for_floats():
    out = detached_leaves(
        {"h": torch.ones(2, requires_grad=True) * 2, "mask": torch.ones(2, dtype=torch.long)}
    )
    assert out["h"].is_leaf and out["h"].requires_grad and not out["mask"].requires_grad


def test_header_round_trip():
    x = {"hidden": torch.zeros(2, 3, 4, dtype=torch.bfloat16), "mask": torch.zeros(2, 3, dtype=torch.bool)}
    header = encode_header(x)
    assert len(header) == HEADER
    is_dict, specs = decode_header(header)
    assert is_dict and specs == [("hidden", torch.bfloat16, (2, 3, 4)), ("mask", torch.bool, (2, 3))]
    is_dict, specs = decode_header(encode_header(torch.zeros(5)))
    assert not is_dict and specs == [("", torch.float32, (5,))]
