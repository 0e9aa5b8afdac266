"""The flat layout: a model's trainable tensors, in a fixed order, as one vector.

Secure aggregation masks one flat vector, so the coordinator and every client must agree on
which coordinate is which. A ``FlatLayout`` lists ``(name, shape)`` for each trainable
parameter in ``model.named_parameters()`` order (registration order, the same for the same
model code) and maps between those tensors and one 1-D vector of length ``size``::

    [ param_0.flatten() | param_1.flatten() | ... ]

Its ``fingerprint`` (sha256 of the names and shapes) travels with every round, and
``check(model)`` refuses a model whose tensors differ, naming the first difference.

Buffers (for example BatchNorm running statistics) are not part of the layout: they are not
federated. Tasks should use normalisation without running statistics (LayerNorm, GroupNorm).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fedadamw.errors import InvalidArgumentError, LayoutMismatchError

__all__ = ["FlatLayout", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the layout: its parameter name and shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class FlatLayout:
    """The ordered tensors of a model and their place in one flat vector."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...] = field(init=False, repr=False)
    size: int = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise InvalidArgumentError("a flat layout needs unique tensor names")
        offsets, total = [], 0
        for spec in self.specs:
            offsets.append(total)
            total += spec.numel
        canonical = json.dumps([[s.name, list(s.shape)] for s in self.specs], separators=(",", ":"))
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "size", total)
        object.__setattr__(self, "fingerprint", hashlib.sha256(canonical.encode()).hexdigest())

    @classmethod
    def from_named(cls, named: Iterable[tuple[str, Tensor]]) -> FlatLayout:
        return cls(tuple(TensorSpec(name, tuple(t.shape)) for name, t in named))

    @classmethod
    def from_model(cls, model: nn.Module) -> FlatLayout:
        """The layout of ``model``'s parameters that require a gradient."""
        return cls.from_named(_trainable(model))

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [{"name": s.name, "shape": list(s.shape)} for s in self.specs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlatLayout:
        try:
            specs = tuple(
                TensorSpec(str(item["name"]), tuple(int(n) for n in item["shape"]))
                for item in data["tensors"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"not a flat layout: {exc}") from exc
        return cls(specs)

    def check(self, model: nn.Module) -> None:
        """Raise ``LayoutMismatchError`` unless ``model``'s trainable tensors match exactly."""
        self.check_named((name, tuple(p.shape)) for name, p in _trainable(model))

    def check_named(self, named: Iterable[tuple[str, tuple[int, ...]]]) -> None:
        actual = list(named)
        expected = [(s.name, s.shape) for s in self.specs]
        if actual == expected:
            return
        actual_names = {name for name, _ in actual}
        expected_names = {name for name, _ in expected}
        if missing := [n for n, _ in expected if n not in actual_names]:
            problem = f"the model lacks tensor(s) {missing[:3]}"
        elif extra := [n for n, _ in actual if n not in expected_names]:
            problem = f"the model has unexpected tensor(s) {extra[:3]}"
        else:
            shapes = dict(actual)
            wrong = next(((n, s) for n, s in expected if shapes[n] != s), None)
            if wrong:
                name, shape = wrong
                problem = f"tensor {name!r} has shape {shapes[name]}, the layout says {shape}"
            else:
                problem = "the model lists its tensors in another order"
        raise LayoutMismatchError(
            f"model does not match the flat layout {self.fingerprint[:12]}: {problem}. "
            "The coordinator and the client must build the same task and model."
        )

    def flatten(self, tensors: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> Tensor:
        """Concatenate one tensor per spec, in layout order, into a new 1-D tensor.

        The result is on the first tensor's device with ``dtype`` (default: the first
        tensor's). Raises ``LayoutMismatchError`` on a wrong count or shape.
        """
        if len(tensors) != len(self.specs):
            raise LayoutMismatchError(
                f"expected {len(self.specs)} tensors for the flat layout, got {len(tensors)}"
            )
        for spec, tensor in zip(self.specs, tensors, strict=True):
            if tuple(tensor.shape) != spec.shape:
                raise LayoutMismatchError(
                    f"tensor {spec.name!r} has shape {tuple(tensor.shape)}, "
                    f"the layout says {spec.shape}"
                )
        if not tensors:
            return torch.zeros(0, dtype=dtype or torch.float32)
        out_dtype = dtype or tensors[0].dtype
        return torch.cat([t.detach().reshape(-1).to(out_dtype) for t in tensors])

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Views of ``vector``, one per spec, shaped as the layout says."""
        self._check_vector(vector)
        return [
            vector[offset : offset + spec.numel].view(spec.shape)
            for spec, offset in zip(self.specs, self.offsets, strict=True)
        ]

    def read(self, model: nn.Module, *, dtype: torch.dtype | None = None) -> Tensor:
        """``model``'s trainable parameters as one new vector, after checking the layout."""
        self.check(model)
        return self.flatten([p for _, p in _trainable(model)], dtype=dtype)

    @torch.no_grad()
    def write(self, model: nn.Module, vector: Tensor) -> None:
        """Copy ``vector`` into ``model``'s trainable parameters, after checking the layout."""
        self.check(model)
        for (_, param), part in zip(_trainable(model), self.unflatten(vector), strict=True):
            param.copy_(part)

    def _check_vector(self, vector: Tensor) -> None:
        if vector.dim() != 1 or vector.numel() != self.size:
            raise LayoutMismatchError(
                f"expected a 1-D vector of {self.size} values for the flat layout, "
                f"got shape {tuple(vector.shape)}"
            )


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]
