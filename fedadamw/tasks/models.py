"""The built-in tasks' models: a small CNN and a small Vision Transformer for 8×8 images.

Neither holds running statistics (no BatchNorm): everything the model computes with is a
parameter, so the flat layout covers it all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitsCNN", "DigitsViT"]


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions, a 2×2 max-pool and two linear layers: 38,282 parameters."""

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        out: Tensor = self.fc2(x)
        return out


class Attention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections.

    Separate projections make each head's rows a contiguous block of ``q.weight``,
    ``k.weight`` and ``v.weight``: the blocks of the ``head`` second-moment mode.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        out: Tensor = self.out(mixed.transpose(1, 2).reshape(batch, tokens, dim))
        return out


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class DigitsViT(nn.Module):
    """A ViT over 2×2 patches of an 8×8 image, with a class token: 69,194 parameters."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        image: int = 8,
        patch: int = 2,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.heads = heads
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (batch, tokens, p*p)
        h = self.embed(patches)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        out: Tensor = self.head(self.norm(h[:, 0]))
        return out

    def head_blocks(self) -> dict[str, int]:
        """The query, key and value projections, split by head."""
        return {
            f"blocks.{i}.attn.{proj}.{kind}": self.heads
            for i in range(len(self.blocks))
            for proj in ("q", "k", "v")
            for kind in ("weight", "bias")
        }
