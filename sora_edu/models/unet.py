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

Three options make it a video model that can follow a prompt's motion (notebook 06's
levers measure each): ``temporal`` adds a 1D time convolution after every spatial block of
a ``dims=2`` U-Net, a (2+1)D network (Video Diffusion Models, arXiv 2204.03458, factorise
space and time the same way); ``scale_shift`` lets the embedding scale the features, not
only shift them (AdaGN); ``coords`` hands the network its (frame, row, column) position.
``extra_channels`` are inputs beyond ``x`` (concatenated to it; the output keeps
``in_channels``): the previous ``x0`` estimate under self-conditioning. ``layout_channels``
are a layout's maps (:mod:`sora_edu.models.layout`), given in the text condition as
``cond["layout"] (B, layout_channels, T, H, W)`` and concatenated to ``x`` the same way:
the object's box in every frame, where a two-stage model draws it. ``forward(...,
features=True)`` also returns the bottleneck's features, which REPA aligns to a CLIP's video
tokens (:class:`~sora_edu.train.diffusion.DiffusionModule`'s ``repa_from``);
``features=("mid", 1)`` returns those and the down path's features at level 1 (half the
input's resolution), which ``probe_from`` aligns to a shape probe's; ``"last"`` is the up
path's full-resolution features, the ones the output convolution reads, which
``segment_weight`` asks to name the shape under every latent cell.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion.embedding import TimestepEmbedder
from .text import TextEncoder, text_inputs


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """Where each position is: ``(B, 3, [T,] H, W)`` channels (frame, row, column), each in
    [-1, 1] (an image is frame -1, the first frame). CoordConv (arXiv 1807.03247): a
    convolution is blind to position, so a layout that depends on the prompt ("moves left"
    starts on the right, and the object is elsewhere in every frame) can only be read off the
    padding; handed the coordinates, a scale from the prompt can place it directly."""
    frames = x.shape[2] if x.ndim == 5 else 1
    axes = [torch.linspace(-1, 1, n, device=x.device, dtype=x.dtype) if n > 1 else
            torch.full((1,), -1.0, device=x.device, dtype=x.dtype) for n in (frames, *x.shape[-2:])]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, T, H, W)
    if x.ndim == 4:
        grid = grid[:, 0]
    return grid.expand(x.shape[0], *grid.shape)


class ResBlock(nn.Module):
    """Two 3x3 convolutions around the embedding. ``scale_shift``: the embedding scales and
    shifts the normalised features (AdaGN, "Diffusion Models Beat GANs", arXiv 2105.05233)
    instead of only being added: a multiplicative way for the condition to pick features."""

    def __init__(self, cin: int, cout: int, emb_dim: int, conv, scale_shift: bool = False) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, cin), cin), conv(cin, cout, 3, padding=1)
        self.scale_shift = scale_shift
        self.emb = nn.Linear(emb_dim, 2 * cout if scale_shift else cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, cout), cout), conv(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb).reshape(h.shape[0], -1, *([1] * (h.ndim - 2)))
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TemporalConv(nn.Module):
    """A residual 1D convolution over time at every pixel: the "+1" of a (2+1)D block
    (R(2+1)D, arXiv 1711.11248; Make-A-Video's pseudo-3D convolutions, arXiv 2209.14792).
    ``x: (B*T, C, H, W)`` frame-major, ``frames = T``. Zero-initialised, so a U-Net trained
    on images loads into it and starts as the same frame-by-frame model."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        y = F.silu(self.norm(x)).unflatten(0, (bt // frames, frames))  # (B, T, C, H, W)
        y = y.permute(0, 3, 4, 2, 1).reshape(-1, c, frames)  # every pixel's time series
        y = self.conv(y).reshape(bt // frames, h, w, c, frames).permute(0, 4, 3, 1, 2)
        return x + y.flatten(0, 1)


class UNet(nn.Module):
    """``forward(x, t, cond) -> same shape as x``. ``channels[i]`` is the width at the i-th
    resolution (``len(channels) - 1`` halvings of H and W, which must divide them)."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128), dims: int = 2,
                 num_classes: int | None = 10, emb_dim: int = 128, blocks: int = 1, vocab_size: int | None = None,
                 text_dim: int = 64, text_depth: int = 2, temporal: bool = False,
                 scale_shift: bool = False, coords: bool = False, extra_channels: int = 0,
                 layout_channels: int = 0) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (videos), got {dims}")
        if temporal and dims != 2:
            raise ValueError("temporal=True adds 1D time convolutions to a dims=2 U-Net ((2+1)D); dims=3 already mixes time")
        if num_classes and vocab_size:
            raise ValueError("condition on classes or on text, not both (set num_classes=null for text)")
        self.dims, self.in_channels, self.num_classes = dims, in_channels, num_classes
        self.extra_channels = extra_channels  # inputs beyond x (a self-conditioning estimate); the output keeps in_channels
        if layout_channels and not vocab_size:
            raise ValueError("layout_channels come in the text condition (cond['layout']): set vocab_size too")
        self.layout_channels = layout_channels
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.levels = len(channels)
        self.time = TimestepEmbedder(emb_dim)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.text = TextEncoder.of_width(vocab_size, text_dim, text_depth) if vocab_size else None
        if self.text is not None:
            self.text_pooled = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.coords = coords
        self.conv_in = conv(in_channels + extra_channels + layout_channels + (3 if coords else 0), channels[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips = []
        for i, c in enumerate(channels):
            cin = channels[max(i - 1, 0)]
            self.down.append(nn.ModuleList([ResBlock(cin if b == 0 else c, c, emb_dim, conv, scale_shift) for b in range(blocks)]))
            skips.append(c)
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, conv, scale_shift)
        for i in reversed(range(self.levels)):
            c, cout = channels[i], channels[max(i - 1, 0)]
            self.up.append(nn.ModuleList([ResBlock(c + skips[i] if b == 0 else c, c if b < blocks - 1 else cout, emb_dim, conv,
                                                   scale_shift)
                                          for b in range(blocks)]))
        # (2+1)D: one temporal convolution after every spatial block, at every resolution
        self.temporal = None
        if temporal:
            order = [b for level in self.down for b in level] + [self.mid] + [b for level in self.up for b in level]
            self.temporal = nn.ModuleList([TemporalConv(b.conv2.out_channels) for b in order])  # _trunk's order
        self.norm_out = nn.GroupNorm(min(8, channels[0]), channels[0])
        self.conv_out = conv(channels[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def feature_dim(self) -> int:
        """Width of the bottleneck features ``forward(..., features=True)`` returns."""
        return self.mid.conv2.out_channels

    def feature_width(self, level: int | str) -> int:
        """Channels of ``forward(..., features=[level])``: ``"mid"``, ``"last"`` or a level ``0 .. levels - 1``."""
        if level == "mid":
            return self.feature_dim
        if level == "last":
            return self.up[-1][-1].conv2.out_channels
        return self.down[self._level(level)][-1].conv2.out_channels

    def _level(self, level) -> int:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.levels:
            raise ValueError(f"feature levels are 'mid', 'last' or 0 .. {self.levels - 1}, got {level!r}")
        return level

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this: every level halves them."""
        return 2 ** (self.levels - 1)

    def _scale(self) -> tuple[int, ...]:
        return (2, 2) if self.dims == 2 else (1, 2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, features: bool | Sequence[int | str] = False):
        """``features=True`` also returns the bottleneck's features ``(B, N, C)``, its positions
        in (frame, row, column) order (what representation alignment reads); a list of levels
        (``"mid"``; ``i``: the last down block at ``1 / 2**i`` of the resolution; ``"last"``:
        the up path's full-resolution features, before the output head) returns a list of
        such features, one per level."""
        levels = ["mid"] if features is True else list(features or [])
        for level in levels:
            if level not in ("mid", "last"):
                self._level(level)
        layout = "(B, C, H, W) or (B, C, T, H, W)" if self.dims == 2 else "(B, C, T, H, W)"
        channels = self.in_channels + self.extra_channels
        if x.ndim not in {self.dims + 2, 5} or x.shape[1] != channels:
            extra = f" (+{self.extra_channels} conditioning)" if self.extra_channels else ""
            raise ValueError(f"expected x {layout} with C = {channels}{extra}, got shape {tuple(x.shape)}")
        factor = self.size_multiple
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
        if self.layout_channels:
            maps = cond.get("layout")
            want = (len(x), self.layout_channels, *x.shape[2:])
            if maps is None or tuple(maps.shape) != want:
                got = "none" if maps is None else tuple(maps.shape)
                raise ValueError(f"this U-Net draws in a layout: expected cond['layout'] {want} (B, C, T, H, W), got {got}")
            x = torch.cat([x, maps.to(x.dtype)], dim=1)
        if self.coords:
            x = torch.cat([x, coordinates(x)], dim=1)
        if x.ndim == 5 and self.dims == 2:  # frame by frame: time folded into the batch
            frames = x.shape[2]
            out, seen = self._trunk(x.transpose(1, 2).flatten(0, 1), emb.repeat_interleave(frames, dim=0), frames)
            out = out.unflatten(0, (x.shape[0], frames)).transpose(1, 2)
            seen = {k: v.unflatten(0, (x.shape[0], frames)).transpose(1, 2) for k, v in seen.items()}  # (B, C, T, h, w)
        else:
            out, seen = self._trunk(x, emb)
        if not features:
            return out
        tokens = [seen[level].flatten(2).transpose(1, 2) for level in levels]
        return (out, tokens[0]) if features is True else (out, tokens)

    def _trunk(self, x: torch.Tensor, emb: torch.Tensor, frames: int = 1) -> tuple[torch.Tensor, dict]:
        # time mixing only when there is time to mix: images (T = 1) see the spatial U-Net alone
        mix = iter(self.temporal) if self.temporal is not None and frames > 1 else None

        def run(block, h):
            h = block(h, emb)
            return next(mix)(h, frames) if mix is not None else h

        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2) if self.dims == 2 else F.avg_pool3d(h, self._scale())
            for block in blocks:
                h = run(block, h)
            skips.append(h)
        h = mid = run(self.mid, h)
        for j, blocks in enumerate(self.up):
            i = self.levels - 1 - j
            h = torch.cat([h, skips[i]], dim=1)
            for block in blocks:
                h = run(block, h)
            if i > 0:
                h = F.interpolate(h, scale_factor=self._scale(), mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h))), {"mid": mid, **dict(enumerate(skips)), "last": h}
