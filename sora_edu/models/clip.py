"""A tiny video-text CLIP: two towers trained so matching (video, caption) pairs embed close.

CLIP ("Learning Transferable Visual Models From Natural Language Supervision", Radford et
al., arXiv 2103.00020): a batch of N pairs gives an N x N similarity matrix; a symmetric
cross-entropy pushes the diagonal (true pairs) up and the rest down. Here the video tower
is a small transformer over the spacetime patches of VAE latents (cheap: the latents are
already computed for text-to-video) and the text tower is
:class:`~sora_edu.models.text.TextEncoder`.

It serves the course twice: as a **retrieval judge** (which of the world's captions does a
generated video match best? its attributes are then read off that caption: a learned
second opinion beside the analytic world-truth scorer), and its text tower is a text
encoder already aligned with video.

Layouts: latents ``(B, C, T, H, W)``; ``ids, mask (B, L)``; embeddings ``(B, dim)``, unit norm.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..patches import TubeletEmbed, grid_coords, grid_size, sincos_coords
from .text import TextEncoder
from .vit import Block


class VideoTower(nn.Module):
    """Spacetime patches of a latent -> transformer -> mean token ``(B, dim)``."""

    def __init__(self, in_channels: int = 8, patch_size: Sequence[int] = (1, 4, 4), dim: int = 128, depth: int = 3,
                 heads: int = 4) -> None:
        super().__init__()
        self.dim, self.patch_size = dim, tuple(patch_size)
        self.embed = TubeletEmbed(self.patch_size, in_channels, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, 2.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every spacetime token ``(B, N, dim)`` (the captioner reads these)."""
        grid = grid_size(x.shape[-3:], self.patch_size)
        h = self.embed(x) + sincos_coords(grid_coords(*grid), self.dim).to(x.device, x.dtype)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(1)


class TinyCLIP(nn.Module):
    """Video and text towers with linear projections into a shared ``embed_dim`` space and
    a learned temperature (initialised to 1/0.07 as in CLIP)."""

    def __init__(self, vocab_size: int, in_channels: int = 8, patch_size: Sequence[int] = (1, 4, 4),
                 video_dim: int = 128, video_depth: int = 3, text_dim: int = 64, text_depth: int = 2,
                 embed_dim: int = 64) -> None:
        super().__init__()
        self.video = VideoTower(in_channels, patch_size, video_dim, video_depth)
        self.text = TextEncoder.of_width(vocab_size, text_dim, text_depth)
        self.video_proj = nn.Linear(video_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_video(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"expected latents (B, C, T, H, W), got shape {tuple(latents.shape)}")
        return F.normalize(self.video_proj(self.video(latents)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids, mask)[1]), dim=-1)

    def forward(self, latents: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Similarity logits ``(B_video, B_text)``, scaled by the temperature (capped at 100, as CLIP)."""
        scale = self.logit_scale.exp().clamp(max=100)
        return scale * self.encode_video(latents) @ self.encode_text(ids, mask).T


def contrastive_loss(logits: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a square ``logits (N, N)`` whose diagonal holds
    the true pairs. ``same (N, N)`` bool marks other pairs that are just as true (two videos
    with the same caption); they share the target mass instead of being pushed apart."""
    n = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != n:
        raise ValueError(f"expected square logits (N, N), got shape {tuple(logits.shape)}")
    target = torch.eye(n, device=logits.device) if same is None else same.float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True)))


def retrieval_accuracy(video_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Top-1 retrieval both ways among N pairs: a hit when the retrieved item's caption is
    the query's own caption (duplicates count as right)."""
    sims = video_emb @ text_emb.T
    caps = list(captions)
    v2t = sum(caps[j] == caps[i] for i, j in enumerate(sims.argmax(1).tolist())) / len(caps)
    t2v = sum(caps[j] == caps[i] for i, j in enumerate(sims.argmax(0).tolist())) / len(caps)
    return {"video_to_text": v2t, "text_to_video": t2v}


__all__ = ["TinyCLIP", "VideoTower", "contrastive_loss", "retrieval_accuracy"]
