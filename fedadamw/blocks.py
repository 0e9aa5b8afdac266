"""The block partition of the second moment v.

Clients upload, and the server averages, one mean of v per block instead of v itself. A
partition splits each tensor of the flat layout into ``n`` equal, contiguous blocks of its
row-major flattening (so along dim 0 when ``n`` divides ``shape[0]``). Three modes:

- ``tensor``: one block per tensor, B = number of tensors (the authors' language-model script);
- ``head``: the tensors a task names are split into one block per attention head (as in
  Adam-mini: the rows of a query, key or value projection that feed one head); every other
  tensor is one block;
- ``full``: one block per coordinate, B = d, so v̄ is the whole averaged v (the authors'
  vision script).

``reduce`` takes v (one tensor per parameter) to the B block means; ``expand`` takes B means
back to one tensor per parameter in the form ``FedAdamW.begin_round`` accepts: a 0-dim tensor
where the whole tensor is one block, a full tensor otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedadamw.errors import InvalidArgumentError, LayoutMismatchError, UnknownNameError
from fedadamw.layout import FlatLayout

__all__ = ["BlockMode", "BlockPartition"]


class BlockMode(enum.StrEnum):
    TENSOR = "tensor"
    HEAD = "head"
    FULL = "full"

    @classmethod
    def parse(cls, value: str) -> BlockMode:
        try:
            return cls(value)
        except ValueError as exc:
            choices = ", ".join(m.value for m in cls)
            raise UnknownNameError(
                f"unknown block mode {value!r}; choose one of {choices}"
            ) from exc


@dataclass(frozen=True)
class BlockPartition:
    """``blocks[i]`` equal blocks for the i-th tensor of ``layout``."""

    layout: FlatLayout
    blocks: tuple[int, ...]
    num_blocks: int = field(init=False)

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.layout.specs):
            raise InvalidArgumentError(
                f"a partition needs one block count per tensor: {len(self.layout.specs)} "
                f"tensors, {len(self.blocks)} counts"
            )
        for spec, n in zip(self.layout.specs, self.blocks, strict=True):
            if n < 1 or spec.numel % n:
                raise InvalidArgumentError(
                    f"tensor {spec.name!r} of {spec.numel} values cannot be split "
                    f"into {n} equal blocks"
                )
        object.__setattr__(self, "num_blocks", sum(self.blocks))

    @classmethod
    def build(
        cls,
        layout: FlatLayout,
        mode: BlockMode,
        *,
        head_blocks: Mapping[str, int] | None = None,
    ) -> BlockPartition:
        """The partition of ``layout`` in ``mode``.

        Args:
            head_blocks: for ``head`` mode, tensor name → number of heads; each named tensor
                is split into that many blocks along dim 0. Ignored by the other modes.

        Raises:
            InvalidArgumentError: ``head`` mode without any named tensor, or a count that
                does not divide the tensor's first dimension.
            LayoutMismatchError: ``head_blocks`` names a tensor that is not in the layout.
        """
        if mode is BlockMode.TENSOR:
            return cls(layout, tuple(1 for _ in layout.specs))
        if mode is BlockMode.FULL:
            return cls(layout, tuple(spec.numel for spec in layout.specs))
        heads = dict(head_blocks or {})
        if not heads:
            raise InvalidArgumentError(
                "block mode 'head' needs a task that names its attention tensors; "
                "this task names none, use 'tensor' or 'full'"
            )
        names = {spec.name for spec in layout.specs}
        if unknown := sorted(set(heads) - names):
            raise LayoutMismatchError(f"head blocks name tensors not in the model: {unknown}")
        for spec in layout.specs:
            n = heads.get(spec.name, 1)
            if spec.shape and spec.shape[0] % n:
                raise InvalidArgumentError(
                    f"tensor {spec.name!r} with first dimension {spec.shape[0]} cannot be "
                    f"split into {n} heads"
                )
        return cls(layout, tuple(heads.get(spec.name, 1) for spec in layout.specs))

    def reduce(self, tensors: Sequence[Tensor]) -> Tensor:
        """Block means of ``tensors`` (one per layout tensor), as a float64 vector of B values."""
        flat = self.layout.flatten(tensors, dtype=torch.float64)
        return self.reduce_flat(flat)

    def reduce_flat(self, vector: Tensor) -> Tensor:
        """Block means of a flat vector of the layout, as a float64 vector of B values."""
        parts = self.layout.unflatten(vector.to(torch.float64))
        return torch.cat(
            [part.reshape(n, -1).mean(dim=1) for part, n in zip(parts, self.blocks, strict=True)]
        )

    def expand(self, means: Tensor) -> list[Tensor]:
        """One tensor per layout tensor from B block means (0-dim where a tensor is one block)."""
        if means.dim() != 1 or means.numel() != self.num_blocks:
            raise LayoutMismatchError(
                f"expected {self.num_blocks} block means, got shape {tuple(means.shape)}"
            )
        out: list[Tensor] = []
        start = 0
        for spec, n in zip(self.layout.specs, self.blocks, strict=True):
            chunk = means[start : start + n]
            start += n
            if n == 1:
                out.append(chunk.reshape(()))
            else:
                out.append(chunk.repeat_interleave(spec.numel // n).reshape(spec.shape))
        return out
