"""ViViT: "ViViT: A Video Vision Transformer" (Arnab et al., arXiv 2103.15691).

Three ways to let attention see space and time, all over the same tubelet tokens:

* ``joint`` (the paper's model 1): every token attends to every other, across space and
  time: ``(t*h*w)^2`` attention.
* ``factorised_encoder`` (model 2): a spatial transformer inside each time step, its
  pooled output per time step fed to a temporal transformer ("late fusion" of time).
* ``factorised_attention`` (model 3): each block attends within a frame, then across
  frames at the same place, then applies its MLP: ``t*(h*w)^2 + h*w*t^2`` attention.

Plus the baseline that cannot see time: :class:`FrameViT`, a ViT applied to each frame
with its per-frame predictions averaged.

Layouts: video ``(B, C, T, H, W)``; tokens ``(B, t*h*w, D)`` in raster order ``(t, h, w)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from einops import rearrange

from ..patches import FrameSamplingEmbed, TubeletEmbed, grid_size, sincos_1d, sincos_2d, sincos_3d
from .vit import Attention, Block, Mlp, ViT

VARIANTS = ("joint", "factorised_encoder", "factorised_attention")


class FactorisedBlock(nn.Module):
    """ViViT model 3: spatial attention, then temporal attention, then the MLP (pre-norm each)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm_s, self.attn_s = nn.LayerNorm(dim), Attention(dim, heads, qk_norm)
        self.norm_t, self.attn_t = nn.LayerNorm(dim), Attention(dim, heads, qk_norm)
        self.norm_m, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = grid
        s = rearrange(x, "b (t n) d -> (b t) n d", t=t)  # a frame's tokens attend to each other
        s = s + self.attn_s(self.norm_s(s))
        tm = rearrange(s, "(b t) n d -> (b n) t d", t=t)  # one place's tokens across time
        tm = tm + self.attn_t(self.norm_t(tm))
        x = rearrange(tm, "(b n) t d -> b (t n) d", n=h * w)
        return x + self.mlp(self.norm_m(x))


class ViViT(nn.Module):
    """Video classifier over ``(B, C, T, H, W)``; ``variant`` picks the attention scheme.

    ``embed="tubelet"`` cuts ``tubelet = (pt, ph, pw)`` cubes; ``embed="frames"`` is uniform
    frame sampling (2D patches ``ph x pw`` of every ``pt``-th frame).
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 3, tubelet: Sequence[int] = (2, 8, 8),
                 dim: int = 96, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 variant: str = "joint", temporal_depth: int = 2, embed: str = "tubelet",
                 qk_norm: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown ViViT variant {variant!r}; choose one of {VARIANTS}")
        if embed not in ("tubelet", "frames"):
            raise ValueError(f"embed must be 'tubelet' or 'frames', got {embed!r}")
        self.variant, self.tubelet = variant, tuple(tubelet)
        pt, ph, pw = self.tubelet
        if embed == "tubelet":
            self.embed = TubeletEmbed(self.tubelet, in_channels, dim)
        else:
            if ph != pw:
                raise ValueError("frame sampling uses square patches: tubelet must be (stride, p, p)")
            self.embed = FrameSamplingEmbed(ph, in_channels, dim, stride=pt)
        if variant == "factorised_attention":
            self.blocks = nn.ModuleList(FactorisedBlock(dim, heads, mlp_ratio, qk_norm) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qk_norm) for _ in range(depth))
        if variant == "factorised_encoder":
            self.temporal = nn.ModuleList(Block(dim, heads, mlp_ratio, qk_norm) for _ in range(temporal_depth))
            self.norm_s = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        if video.ndim != 5:
            raise ValueError(f"ViViT expects video (B, C, T, H, W), got shape {tuple(video.shape)}")
        pt, ph, pw = self.tubelet
        if isinstance(self.embed, FrameSamplingEmbed):
            t = -(-video.shape[2] // pt)
            h, w = grid_size(video.shape[-2:], (ph, pw))
            return t, h, w
        return grid_size(video.shape[-3:], self.tubelet)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled video features ``(B, dim)``."""
        t, h, w = grid = self.grid(video)
        x = self.embed(video)
        d = x.shape[-1]
        if self.variant == "joint":
            x = x + sincos_3d(t, h, w, d).to(x)
            for block in self.blocks:
                x = block(x)
            return self.norm(x).mean(dim=1)
        if self.variant == "factorised_attention":
            x = x + sincos_3d(t, h, w, d).to(x)
            for block in self.blocks:
                x = block(x, grid)
            return self.norm(x).mean(dim=1)
        # factorised encoder: space first (each time step alone), then time over pooled steps
        x = rearrange(x, "b (t n) d -> (b t) n d", t=t) + sincos_2d(h, w, d).to(x)
        for block in self.blocks:
            x = block(x)
        x = rearrange(self.norm_s(x).mean(dim=1), "(b t) d -> b t d", t=t)
        x = x + sincos_1d(torch.arange(t), d).to(x)
        for block in self.temporal:
            x = block(x)
        return self.norm(x).mean(dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: (B, C, T, H, W)`` -> logits ``(B, num_classes)``."""
        return self.head(self.features(video))


class FrameViT(nn.Module):
    """The time-blind baseline: a :class:`ViT` classifies every frame on its own and the
    per-frame log-probabilities are averaged (``fusion="logits"``, late fusion), or the
    per-frame features are averaged before one head (``fusion="features"``).

    Either way the order of frames is lost, so "moves left" and "moves right" look alike.
    Feature averaging still sees the *set* of positions an object visits (a horizontal
    or vertical smear), which per-frame predictions cannot combine; notebook 02 measures both.
    ``frame_stride`` keeps every n-th frame (uniform frame sampling): with 2, a ViT on
    8x8 patches of 4 of 8 frames sees as many tokens as ViViT on 2x8x8 tubelets.
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 3, patch_size: int = 8, dim: int = 96,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, fusion: str = "logits",
                 frame_stride: int = 1) -> None:
        super().__init__()
        if fusion not in ("logits", "features"):
            raise ValueError(f"fusion must be 'logits' or 'features', got {fusion!r}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.fusion, self.frame_stride = fusion, frame_stride
        self.vit = ViT(num_classes, patch_size, in_channels, dim, depth, heads, mlp_ratio)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"FrameViT expects video (B, C, T, H, W), got shape {tuple(video.shape)}")
        b = video.shape[0]
        frames = rearrange(video[:, :, :: self.frame_stride], "b c t h w -> (b t) c h w")
        if self.fusion == "features":
            feats = rearrange(self.vit.features(frames), "(b t) d -> b t d", b=b)
            return self.vit.head(feats.mean(dim=1))
        logp = rearrange(self.vit(frames).log_softmax(dim=-1), "(b t) k -> b t k", b=b)
        return logp.mean(dim=1)
