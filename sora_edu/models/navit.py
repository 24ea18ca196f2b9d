"""NaViT: "Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution"
(Dehghani et al., arXiv 2307.06304).

Images and videos keep their own size: each becomes a sequence of patches whose length
depends on its (T, H, W); several sequences are packed into one row, attention is masked
block-diagonally so examples never see each other, positions come from each token's own
(t, h, w) coordinates, and each example is pooled over its own tokens. Sora trains on
"videos and images of variable durations, resolutions and aspect ratios" in exactly
this spirit.

Layouts: an item is an image ``(C, H, W)`` or a video ``(C, T, H, W)`` (an image is a
one-frame video); a batch is a Python list of items of different sizes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..patches import patch_tuple, grid_coords, grid_size, pack, patchify, segment_mean, sincos_coords
from .vit import Block


class NaViT(nn.Module):
    """A classifier over a list of images/videos of any sizes the patch divides."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3, patch_size: Sequence[int] = (1, 8, 8),
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, max_len: int = 256,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.patch = patch_tuple(tuple(patch_size), 3)
        self.in_channels, self.max_len, self.drop_rate = in_channels, max_len, drop_rate
        # Linear on flattened patches == a conv with kernel = stride = patch (PatchEmbed).
        self.embed = nn.Linear(in_channels * self.patch[0] * self.patch[1] * self.patch[2], dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patches(self, items: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each item's flattened patches ``(N_i, P)`` and grid coordinates ``(N_i, 3)``."""
        seqs, coords = [], []
        for i, x in enumerate(items):
            if x.ndim == 3:
                x = x[:, None]
            if x.ndim != 4 or x.shape[0] != self.in_channels:
                raise ValueError(f"item {i}: expected (C, H, W) or (C, T, H, W) with C = {self.in_channels}, "
                                 f"got shape {tuple(x.shape)}")
            seqs.append(patchify(x[None], self.patch)[0])
            coords.append(grid_coords(*grid_size(x.shape[1:], self.patch)).to(x.device))
        return seqs, coords

    def forward(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        """``items``: list of ``(C, H, W)`` / ``(C, T, H, W)`` -> logits ``(len(items), num_classes)``."""
        seqs, coords = self.patches(items)
        drop = self.drop_rate if self.training else 0.0
        packed = pack(seqs, coords, self.max_len, drop_rate=drop)
        x = self.embed(packed.tokens) + sincos_coords(packed.coords, self.embed.out_features).to(packed.tokens)
        mask = packed.attention_mask()
        for block in self.blocks:
            x = block(x, mask)
        return self.head(segment_mean(self.norm(x), packed))
