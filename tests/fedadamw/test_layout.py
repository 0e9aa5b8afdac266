"""The flat layout and codec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedadamw import FlatLayout
from fedadamw.errors import LayoutMismatchError
from fedadamw.tasks.models import DigitsCNN


def test_round_trip_through_the_flat_vector() -> None:
    model = DigitsCNN()
    layout = FlatLayout.from_model(model)
    vector = layout.read(model)
    assert vector.shape == (sum(p.numel() for p in model.parameters()),)
    other = DigitsCNN()
    layout.write(other, vector)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
    parts = layout.unflatten(vector)
    assert [tuple(p.shape) for p in parts] == [s.shape for s in layout.specs]
    assert parts[0].data_ptr() == vector.data_ptr()  # views, no copy


def test_order_and_fingerprint_are_deterministic() -> None:
    a, b = FlatLayout.from_model(DigitsCNN()), FlatLayout.from_model(DigitsCNN())
    assert a == b
    assert a.fingerprint == b.fingerprint
    assert [s.name for s in a.specs] == [n for n, _ in DigitsCNN().named_parameters()]
    assert FlatLayout.from_dict(a.to_dict()) == a
    assert FlatLayout.from_model(nn.Linear(3, 2)).fingerprint != a.fingerprint


def test_frozen_parameters_are_not_part_of_the_layout() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    assert [s.name for s in FlatLayout.from_model(model).specs] == ["0.bias", "1.weight", "1.bias"]


class Renamed(nn.Module):
    def __init__(self, width: int = 3, extra: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(2, width)
        self.second = nn.Linear(width, 1)
        if extra:
            self.third = nn.Linear(1, 1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), "lacks tensor"),
        (Renamed(width=4), "tensor 'first.weight' has shape (4, 2), the layout says (3, 2)"),
        (Renamed(extra=True), "unexpected tensor"),
    ],
)
def test_a_mismatched_model_is_refused_clearly(model: nn.Module, message: str) -> None:
    layout = FlatLayout.from_model(Renamed())
    with pytest.raises(LayoutMismatchError, match="does not match the flat layout") as info:
        layout.check(model)
    assert message in str(info.value)
    with pytest.raises(LayoutMismatchError):
        layout.write(model, torch.zeros(layout.size))


def test_reordered_tensors_are_refused() -> None:
    layout = FlatLayout.from_named([("a", torch.zeros(2)), ("b", torch.zeros(2))])
    with pytest.raises(LayoutMismatchError, match="another order"):
        layout.check_named([("b", (2,)), ("a", (2,))])


def test_wrong_vectors_are_refused() -> None:
    layout = FlatLayout.from_model(Renamed())
    with pytest.raises(LayoutMismatchError, match="1-D vector of 13 values"):
        layout.unflatten(torch.zeros(12))
    with pytest.raises(LayoutMismatchError, match="expected 4 tensors"):
        layout.flatten([torch.zeros(3, 2)])
