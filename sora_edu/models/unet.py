"""A compact U-Net denoiser, the network to learn diffusion with before the DiT arrives.

U-Net (Ronneberger et al., arXiv 1505.04597) as DDPM uses it (arXiv 2006.11239): residual
conv blocks at a few resolutions, a downsampling path, an upsampling path, and skip
connections that hand each resolution's features across. The noise level and the
condition enter every block as one embedding vector (time embedding + class embedding),
added to the features. ``dims=2`` for images ``(B, C, H, W)``; ``dims=3`` for videos or
video latents ``(B, C, T, H, W)``, where 3x3x3 convolutions mix time and only space is
downsampled (latent clips are a handful of frames long).

Class conditioning: ``cond (B,)`` long labels in ``[0, num_classes]``; the extra label
``num_classes`` is the *null* condition for classifier-free guidance. Text conditioning
(``vocab_size``): ``cond = {"ids": (B, L), "mask": (B, L)}``, encoded by a
:class:`~sora_edu.models.text.TextEncoder` trained jointly; its pooled output joins the
time embedding, as in the spacetime DiT's adaLN (the empty prompt is the null text). A
``dims=2`` U-Net given ``(B, C, T, H, W)`` runs on every frame on its own (T = 1: images
from the text-to-video data), the DiT's convolutional counterpart in notebook 06's levers.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion.embedding import TimestepEmbedder
from .text import TextEncoder, text_inputs


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, conv) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, cin), cin), conv(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, cout), cout), conv(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb).reshape(*h.shape[:2], *([1] * (h.ndim - 2)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """``forward(x, t, cond) -> same shape as x``. ``channels[i]`` is the width at the i-th
    resolution (``len(channels) - 1`` halvings of H and W, which must divide them)."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128), dims: int = 2,
                 num_classes: int | None = 10, emb_dim: int = 128, blocks: int = 1, vocab_size: int | None = None,
                 text_dim: int = 64, text_depth: int = 2) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (videos), got {dims}")
        if num_classes and vocab_size:
            raise ValueError("condition on classes or on text, not both (set num_classes=null for text)")
        self.dims, self.in_channels, self.num_classes = dims, in_channels, num_classes
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.levels = len(channels)
        self.time = TimestepEmbedder(emb_dim)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.text = TextEncoder.of_width(vocab_size, text_dim, text_depth) if vocab_size else None
        if self.text is not None:
            self.text_pooled = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = conv(in_channels, channels[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips = []
        for i, c in enumerate(channels):
            cin = channels[max(i - 1, 0)]
            self.down.append(nn.ModuleList([ResBlock(cin if b == 0 else c, c, emb_dim, conv) for b in range(blocks)]))
            skips.append(c)
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, conv)
        for i in reversed(range(self.levels)):
            c, cout = channels[i], channels[max(i - 1, 0)]
            self.up.append(nn.ModuleList([ResBlock(c + skips[i] if b == 0 else c, c if b < blocks - 1 else cout, emb_dim, conv)
                                          for b in range(blocks)]))
        self.norm_out = nn.GroupNorm(min(8, channels[0]), channels[0])
        self.conv_out = conv(channels[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _scale(self) -> tuple[int, ...]:
        return (2, 2) if self.dims == 2 else (1, 2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        layout = "(B, C, H, W) or (B, C, T, H, W)" if self.dims == 2 else "(B, C, T, H, W)"
        if x.ndim not in {self.dims + 2, 5} or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x {layout} with C = {self.in_channels}, got shape {tuple(x.shape)}")
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"H and W must be multiples of {factor} (the U-Net's downsampling), got {tuple(x.shape[-2:])}")
        emb = self.time(t)
        if self.label is not None:
            if cond is None:
                raise ValueError(f"this U-Net is class-conditional: pass cond (B,) labels in [0, {self.num_classes}] "
                                 f"({self.num_classes} = null)")
            emb = emb + self.label(cond)
        elif self.text is not None:
            emb = emb + self.text_pooled(self.text(*text_inputs(cond, "U-Net"))[1])
        if x.ndim == 5 and self.dims == 2:  # frame by frame: time folded into the batch
            frames = x.shape[2]
            out = self._trunk(x.transpose(1, 2).flatten(0, 1), emb.repeat_interleave(frames, dim=0))
            return out.unflatten(0, (x.shape[0], frames)).transpose(1, 2)
        return self._trunk(x, emb)

    def _trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2) if self.dims == 2 else F.avg_pool3d(h, self._scale())
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for j, blocks in enumerate(self.up):
            i = self.levels - 1 - j
            h = torch.cat([h, skips[i]], dim=1)
            for block in blocks:
                h = block(h, emb)
            if i > 0:
                h = F.interpolate(h, scale_factor=self._scale(), mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))
