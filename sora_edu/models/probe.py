"""A noise-aware shape probe: which (shape, size) a noisy video latent holds.

A small convolutional classifier on latents noised along the flow path, ``x_t = (1 - t) x0
+ t eps``: ``ShapeProbe(x_t (B, C, T, H, W), t (B,) in [0, 1]) -> (B, classes)`` logits, one
class per (shape, size) pair of the world (:func:`shape_size_labels` reads them off the
captions). It runs frame by frame (time folded into the batch: shape and size are per
frame) and averages its frames' logits.

Its use is as a representation. :meth:`ShapeProbe.tokens` gives its features of a *clean*
latent at half the latent's resolution, ``(B, T * H/2 * W/2, D)`` in (frame, row, column)
order; :class:`~sora_edu.train.diffusion.DiffusionModule` (``probe_from``) pulls the U-Net's
features at the same resolution towards them, as REPA (Yu et al., "Representation Alignment
for Generation", arXiv 2410.06940) does with a pretrained encoder's. The tiny CLIP, REPA's
other target here, had to tell captions apart, and a small cross and a small blob share
every word of a caption but one; a probe that must name the shape of small objects has to
tell exactly those apart (notebook 06: on real latents it is 100 % right up to t = 0.3 and
reads small crosses down to t = 0.7). Noise-aware (``t`` as AdaGN) as classifier guidance's
classifiers are (Dhariwal & Nichol, arXiv 2105.05233), so the same probe also judges the
sampler's intermediate states.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion.embedding import TimestepEmbedder
from .unet import ResBlock


class ShapeProbe(nn.Module):
    """``width`` channels at the latent's resolution, ``2 * width`` (= :attr:`dim`) at half of it.

    ``forward(x (B, C, T, H, W), t (B,) flow times in [0, 1]) -> (B, classes)`` logits.
    """

    def __init__(self, in_channels: int = 8, width: int = 48, classes: int = 8, emb_dim: int = 128) -> None:
        super().__init__()
        self.in_channels, self.classes = in_channels, classes
        self.time = TimestepEmbedder(emb_dim)
        conv = nn.Conv2d
        self.stem = conv(in_channels, width, 3, padding=1)
        self.full = ResBlock(width, width, emb_dim, conv, scale_shift=True)
        self.down = conv(width, 2 * width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([ResBlock(2 * width, 2 * width, emb_dim, conv, scale_shift=True) for _ in range(2)])
        self.norm = nn.GroupNorm(8, 2 * width)
        # Mean and max over positions: a small object covers a few cells of the grid.
        self.head = nn.Linear(4 * width, classes)

    @property
    def dim(self) -> int:
        """Width of :meth:`tokens`."""
        return self.head.in_features // 2

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x (B, C, T, H, W)``, ``t (B,)`` -> ``(B, dim, T, H/2, W/2)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected latents (B, C, T, H, W) with C = {self.in_channels}, got shape {tuple(x.shape)}")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"H and W must be even (the probe halves them), got {tuple(x.shape[-2:])}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected times t (B,) = ({x.shape[0]},), got shape {tuple(t.shape)}")
        b, frames = x.shape[0], x.shape[2]
        emb = self.time(t.float() * 1000).repeat_interleave(frames, dim=0)  # flow times on the U-Net's scale
        h = self.full(self.stem(x.transpose(1, 2).flatten(0, 1)), emb)
        h = self.down(F.silu(h))
        for block in self.blocks:
            h = block(h, emb)
        return h.unflatten(0, (b, frames)).transpose(1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.features(x, t).transpose(1, 2).flatten(0, 1)))  # (B T, D, h, w)
        logits = self.head(torch.cat([h.mean((-2, -1)), h.amax((-2, -1))], dim=1))
        return logits.unflatten(0, (x.shape[0], -1)).mean(1)

    def tokens(self, x0: torch.Tensor) -> torch.Tensor:
        """The features of clean latents ``x0 (B, C, T, H, W)``: ``(B, T * H/2 * W/2, dim)``,
        positions in (frame, row, column) order (REPA's target)."""
        return self.features(x0, torch.zeros(len(x0), device=x0.device)).flatten(2).transpose(1, 2)


def shape_size_labels(ids: torch.Tensor, tokenizer, shapes, sizes) -> torch.Tensor:
    """Token ids of one-object captions ``(B, L)`` -> ``(B,)`` classes ``shape_index *
    len(sizes) + size_index``, read off the shape and size words each caption names."""
    found = []
    for values in (shapes, sizes):
        table = torch.full((len(tokenizer),), -1, dtype=torch.long, device=ids.device)
        for i, word in enumerate(values):
            if word not in tokenizer.index:
                raise ValueError(f"{word!r} is not in the tokenizer's vocabulary")
            table[tokenizer.index[word]] = i
        found.append(table[ids].amax(1))  # -1 where no word of the list is in the caption
    shape, size = found
    missing = (shape < 0) | (size < 0)
    if missing.any():
        caption = tokenizer.decode(ids[missing][:1])[0]
        raise ValueError(f"{int(missing.sum())} captions name no shape or no size of {tuple(shapes)} x {tuple(sizes)}, "
                         f"e.g. {caption!r}")
    return shape * len(sizes) + size


__all__ = ["ShapeProbe", "shape_size_labels"]
