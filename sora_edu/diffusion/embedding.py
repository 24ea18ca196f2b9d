"""The timestep embedding: a scalar noise level -> a vector the network can use.

Sinusoids of geometrically spaced frequencies (as the Transformer's positions, arXiv
1706.03762, and DDPM, arXiv 2006.11239), then an MLP (as in DiT, arXiv 2212.09748).
Times are floats: discrete steps ``0 .. T-1`` or flow times scaled to the same range.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """``t: (B,)`` -> ``(B, dim)``: ``[cos(t w_i), sin(t w_i)]`` with ``w_i`` from 1 to 1/max_period."""
    if t.ndim != 1:
        raise ValueError(f"expected timesteps (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int = 128) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim))
