"""The block partition of v."""

from __future__ import annotations

import pytest
import torch

from fedadamw import BlockMode, BlockPartition, FlatLayout
from fedadamw.errors import InvalidArgumentError, LayoutMismatchError, UnknownNameError

LAYOUT = FlatLayout.from_named(
    [("q.weight", torch.zeros(4, 3)), ("q.bias", torch.zeros(4)), ("out", torch.zeros(2, 2))]
)


def _v() -> list[torch.Tensor]:
    return [t.clone() for t in LAYOUT.unflatten(torch.arange(LAYOUT.size, dtype=torch.float64))]


def test_tensor_mode_is_one_mean_per_tensor() -> None:
    part = BlockPartition.build(LAYOUT, BlockMode.TENSOR)
    assert part.num_blocks == 3
    v = _v()
    means = part.reduce(v)
    torch.testing.assert_close(means, torch.stack([t.mean() for t in v]))
    expanded = part.expand(means)
    assert all(t.dim() == 0 for t in expanded)


def test_full_mode_keeps_every_coordinate() -> None:
    part = BlockPartition.build(LAYOUT, BlockMode.FULL)
    assert part.num_blocks == LAYOUT.size
    v = _v()
    means = part.reduce(v)
    for a, b in zip(part.expand(means), v, strict=True):
        assert torch.equal(a, b)


def test_head_mode_splits_named_tensors_by_rows() -> None:
    part = BlockPartition.build(LAYOUT, BlockMode.HEAD, head_blocks={"q.weight": 2, "q.bias": 2})
    assert part.blocks == (2, 2, 1)
    v = _v()
    means = part.reduce(v)
    q = v[0]
    torch.testing.assert_close(means[:2], torch.stack([q[:2].mean(), q[2:].mean()]))
    expanded = part.expand(means)
    assert expanded[0].shape == (4, 3)
    torch.testing.assert_close(
        expanded[0][:2], torch.full((2, 3), float(q[:2].mean()), dtype=torch.float64)
    )
    assert expanded[2].dim() == 0


def test_reduce_then_expand_preserves_each_block_mean() -> None:
    part = BlockPartition.build(LAYOUT, BlockMode.HEAD, head_blocks={"q.weight": 4})
    v = [torch.rand_like(t) for t in _v()]
    means = part.reduce(v)
    again = part.reduce(
        [e.expand(s.shape) for e, s in zip(part.expand(means), LAYOUT.specs, strict=True)]
    )
    torch.testing.assert_close(means, again)


def test_bad_partitions_say_why() -> None:
    with pytest.raises(InvalidArgumentError, match="names none"):
        BlockPartition.build(LAYOUT, BlockMode.HEAD)
    with pytest.raises(LayoutMismatchError, match="not in the model"):
        BlockPartition.build(LAYOUT, BlockMode.HEAD, head_blocks={"k.weight": 2})
    with pytest.raises(InvalidArgumentError, match="cannot be split into 3 heads"):
        BlockPartition.build(LAYOUT, BlockMode.HEAD, head_blocks={"q.weight": 3})
    with pytest.raises(UnknownNameError, match="tensor, head, full"):
        BlockMode.parse("rows")
    part = BlockPartition.build(LAYOUT, BlockMode.TENSOR)
    with pytest.raises(LayoutMismatchError, match="expected 3 block means"):
        part.expand(torch.zeros(4))
