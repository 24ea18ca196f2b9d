"""Visual data as patches: the tokens of every transformer in this course.

Sora's report: "we turn videos into patches by first compressing videos into a
lower-dimensional latent space, and subsequently decomposing the representation into
spacetime patches". Three papers give the pieces:

* ViT ("An Image is Worth 16x16 Words", arXiv 2010.11929): cut an image into ``p x p``
  patches, flatten each, project it linearly: ``PatchEmbed``.
* ViViT ("ViViT: A Video Vision Transformer", arXiv 2103.15691): for video, either embed
  sampled frames one by one (*uniform frame sampling*, ``FrameSamplingEmbed``) or cut
  ``t x p x p`` *tubelets* that span time too (``TubeletEmbed``).
* NaViT ("Patch n' Pack", arXiv 2307.06304): images and videos of any size give token
  sequences of different lengths; *pack* several into one fixed-length row and stop
  attention across examples with a block-diagonal mask (``pack`` / ``unpack``).

Layouts: image ``(B, C, H, W)``, video ``(B, C, T, H, W)``, tokens ``(B, N, D)`` with tokens
in raster order ``(t, h, w)``: time slowest, width fastest. Positions are fixed sin-cos
features (they extend to any grid size, which learned tables do not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from einops import rearrange

# --- patchify / unpatchify -----------------------------------------------------------------


def patch_tuple(patch_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """An int is a spatial patch side: (p, p) for images, (1, p, p) for video."""
    if isinstance(patch_size, int):
        patch = (patch_size, patch_size) if ndim == 2 else (1, patch_size, patch_size)
    else:
        patch = tuple(int(p) for p in patch_size)
    if len(patch) != ndim or any(p < 1 for p in patch):
        raise ValueError(f"patch_size must be a positive int or {ndim} positive ints, got {patch_size!r}")
    return patch


def grid_size(size: Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, ...]:
    """Tokens along each axis: ``(H/ph, W/pw)`` or ``(T/pt, H/ph, W/pw)``; must divide exactly."""
    size = tuple(int(s) for s in size)
    patch = patch_tuple(patch_size, len(size))
    names = ("H", "W") if len(size) == 2 else ("T", "H", "W")
    for name, s, p in zip(names, size, patch):
        if s % p:
            raise ValueError(f"{name} = {s} is not divisible by the patch size {p} (patch {patch} for size {size})")
    return tuple(s // p for s, p in zip(size, patch))


def patchify(x: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """Cut into non-overlapping patches and flatten each one.

    ``x: (B, C, H, W)`` -> ``(B, h*w, ph*pw*C)``;
    ``x: (B, C, T, H, W)`` -> ``(B, t*h*w, pt*ph*pw*C)``.
    """
    if x.ndim == 4:
        ph, pw = patch_tuple(patch_size, 2)
        grid_size(x.shape[-2:], (ph, pw))
        return rearrange(x, "b c (h ph) (w pw) -> b (h w) (ph pw c)", ph=ph, pw=pw)
    if x.ndim == 5:
        pt, ph, pw = patch_tuple(patch_size, 3)
        grid_size(x.shape[-3:], (pt, ph, pw))
        return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
    raise ValueError(f"patchify expects an image (B, C, H, W) or a video (B, C, T, H, W), got shape {tuple(x.shape)}")


def unpatchify(tokens: torch.Tensor, patch_size: int | Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``tokens (B, N, P*C)`` back to ``(B, C, *size)``.

    ``size`` is ``(H, W)`` or ``(T, H, W)`` of the original; ``C`` follows from the token width.
    """
    if tokens.ndim != 3:
        raise ValueError(f"unpatchify expects tokens (B, N, D), got shape {tuple(tokens.shape)}")
    grid = grid_size(size, patch_size)
    patch = patch_tuple(patch_size, len(size))
    if tokens.shape[1] != math.prod(grid):
        raise ValueError(f"expected {math.prod(grid)} tokens for size {tuple(size)} and patch {patch}, got {tokens.shape[1]}")
    volume = math.prod(patch)
    if tokens.shape[2] % volume:
        raise ValueError(f"token width {tokens.shape[2]} is not a multiple of the patch volume {volume}")
    if len(size) == 2:
        return rearrange(tokens, "b (h w) (ph pw c) -> b c (h ph) (w pw)", h=grid[0], w=grid[1], ph=patch[0], pw=patch[1])
    return rearrange(tokens, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                     t=grid[0], h=grid[1], w=grid[2], pt=patch[0], ph=patch[1], pw=patch[2])


# --- embeddings ----------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """ViT's patch embedding: ``(B, C, H, W)`` -> ``(B, h*w, dim)``.

    A linear map of each flattened patch is exactly a convolution with kernel = stride =
    patch size; the convolution is the fast path (a test checks they agree).
    """

    def __init__(self, patch_size: int = 4, in_channels: int = 3, dim: int = 64) -> None:
        super().__init__()
        self.patch_size = patch_tuple(patch_size, 2)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"PatchEmbed expects (B, {self.proj.in_channels}, H, W), got shape {tuple(x.shape)}")
        grid_size(x.shape[-2:], self.patch_size)
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class TubeletEmbed(nn.Module):
    """ViViT's tubelet embedding: ``(B, C, T, H, W)`` -> ``(B, t*h*w, dim)``, tubelets ``pt x ph x pw``."""

    def __init__(self, tubelet: Sequence[int] = (2, 4, 4), in_channels: int = 3, dim: int = 64) -> None:
        super().__init__()
        self.tubelet = patch_tuple(tuple(tubelet), 3)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"TubeletEmbed expects (B, {self.proj.in_channels}, T, H, W), got shape {tuple(x.shape)}")
        grid_size(x.shape[-3:], self.tubelet)
        return rearrange(self.proj(x), "b d t h w -> b (t h w) d")


class FrameSamplingEmbed(nn.Module):
    """ViViT's uniform frame sampling: keep every ``stride``-th frame, embed each with ViT's
    :class:`PatchEmbed`. ``(B, C, T, H, W)`` -> ``(B, ceil(T/stride)*h*w, dim)``; no token
    sees more than one frame, so time is only mixed later, by attention."""

    def __init__(self, patch_size: int = 4, in_channels: int = 3, dim: int = 64, stride: int = 1) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.embed = PatchEmbed(patch_size, in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"FrameSamplingEmbed expects (B, C, T, H, W), got shape {tuple(x.shape)}")
        frames = x[:, :, :: self.stride]
        b = frames.shape[0]
        tokens = self.embed(rearrange(frames, "b c t h w -> (b t) c h w"))
        return rearrange(tokens, "(b t) n d -> b (t n) d", b=b)


# --- fixed sin-cos positions ---------------------------------------------------------------


def sincos_1d(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``positions (...)`` -> ``(..., dim)``: sines and cosines at geometric frequencies
    (Transformer, arXiv 1706.03762). ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    freqs = base ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def sincos_coords(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-token positions from integer coordinates ``coords (..., k)`` -> ``(..., dim)``.

    Each axis gets an equal, even share of the channels (the remainder is zero): the same
    rule serves 1D, 2D (h, w) and 3D (t, h, w) grids and NaViT's packed tokens.
    """
    k = coords.shape[-1]
    share = 2 * (dim // (2 * k))
    if share == 0:
        raise ValueError(f"dim {dim} is too small for {k} position axes (need >= {2 * k})")
    parts = [sincos_1d(coords[..., i], share) for i in range(k)]
    out = torch.cat(parts, dim=-1)
    if out.shape[-1] < dim:
        out = torch.cat([out, out.new_zeros(*out.shape[:-1], dim - out.shape[-1])], dim=-1)
    return out


def grid_coords(*sizes: int) -> torch.Tensor:
    """Integer coordinates of a raster grid: ``grid_coords(t, h, w) -> (t*h*w, 3)``."""
    axes = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Positions of an ``h x w`` grid in raster order: ``(h*w, dim)``."""
    return sincos_coords(grid_coords(h, w), dim)


def sincos_3d(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """Positions of a ``t x h x w`` spacetime grid in raster order: ``(t*h*w, dim)``."""
    return sincos_coords(grid_coords(t, h, w), dim)


def sincos_factorised(t: int, h: int, w: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factorised space + time positions: ``spatial (h*w, dim)`` and ``temporal (t, dim)``.

    Added separately (space inside a frame, time across frames), as factorised encoders
    do; the sum for token ``(t, h, w)`` is ``spatial[h*w_ + w] + temporal[t]``.
    """
    return sincos_2d(h, w, dim), sincos_1d(torch.arange(t), dim)


# --- NaViT: patch n' pack ------------------------------------------------------------------


@dataclass
class Packed:
    """Several token sequences packed into rows of equal length.

    ``tokens (R, L, D)``; ``coords (R, L, k)`` each token's grid position (zeros on padding);
    ``segments (R, L)`` which input sequence a token came from (``-1`` = padding);
    ``spans[i] = (row, start, length)`` where sequence ``i`` sits; ``kept[i]`` the indices
    of its tokens that survived token dropping (all of them when nothing was dropped).
    """

    tokens: torch.Tensor
    coords: torch.Tensor
    segments: torch.Tensor
    spans: list[tuple[int, int, int]]
    kept: list[torch.Tensor]

    def attention_mask(self) -> torch.Tensor:
        """Block-diagonal mask ``(R, 1, L, L)``, True where attention is allowed: a token
        sees only tokens of its own sequence. A padding token sees itself alone, so no
        softmax row is empty (an empty row would give NaN)."""
        seg = self.segments
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        eye = torch.eye(seg.shape[1], dtype=torch.bool, device=seg.device)[None]
        return (same | ((seg[:, :, None] < 0) & eye))[:, None]

    @property
    def padding_fraction(self) -> float:
        return (self.segments < 0).float().mean().item()


def pack(sequences: Sequence[torch.Tensor], coords: Sequence[torch.Tensor], max_len: int,
         drop_rate: float = 0.0, generator: torch.Generator | None = None) -> Packed:
    """Pack token sequences ``(N_i, D)`` with coordinates ``(N_i, k)`` into rows of ``max_len``.

    Greedy first-fit in order of decreasing length (a good, simple bin-packing rule).
    ``drop_rate`` randomly drops that fraction of each sequence's tokens first (NaViT's
    token dropping: cheaper training, and a sequence that was too long may now fit).
    """
    if len(sequences) == 0 or len(sequences) != len(coords):
        raise ValueError(f"need as many coordinate tensors as sequences (>= 1), got {len(sequences)} and {len(coords)}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    dim, k = sequences[0].shape[-1], coords[0].shape[-1]
    kept = []
    for i, (seq, c) in enumerate(zip(sequences, coords)):
        if seq.ndim != 2 or seq.shape[1] != dim or c.shape != (seq.shape[0], k):
            raise ValueError(f"sequence {i}: expected tokens (N, {dim}) and coords (N, {k}), "
                             f"got {tuple(seq.shape)} and {tuple(c.shape)}")
        n = seq.shape[0]
        if drop_rate > 0:
            keep = max(1, round(n * (1 - drop_rate)))
            kept.append(torch.randperm(n, generator=generator)[:keep].sort().values)
        else:
            kept.append(torch.arange(n))
        if len(kept[-1]) > max_len:
            raise ValueError(f"sequence {i} has {len(kept[-1])} tokens, more than max_len = {max_len}")
    order = sorted(range(len(sequences)), key=lambda i: -len(kept[i]))
    free: list[int] = []  # room left in each row
    spans: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sequences)
    for i in order:
        n = len(kept[i])
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            free.append(max_len)
            row = len(free) - 1
        spans[i] = (row, max_len - free[row], n)
        free[row] -= n
    R = len(free)
    ref = sequences[0]
    tokens = ref.new_zeros(R, max_len, dim)
    packed_coords = torch.zeros(R, max_len, k, dtype=torch.long, device=ref.device)
    segments = torch.full((R, max_len), -1, dtype=torch.long, device=ref.device)
    for i, (row, start, n) in enumerate(spans):
        tokens[row, start:start + n] = sequences[i][kept[i]]
        packed_coords[row, start:start + n] = coords[i][kept[i]].long()
        segments[row, start:start + n] = i
    return Packed(tokens, packed_coords, segments, spans, kept)


def unpack(tokens: torch.Tensor, packed: Packed) -> list[torch.Tensor]:
    """Split packed rows ``(R, L, D')`` back into one ``(N_i, D')`` tensor per input sequence
    (only the kept tokens, in their original order)."""
    if tokens.shape[:2] != packed.segments.shape:
        raise ValueError(f"expected tokens (R, L, D) with (R, L) = {tuple(packed.segments.shape)}, got {tuple(tokens.shape)}")
    return [tokens[row, start:start + n] for row, start, n in packed.spans]


def segment_mean(tokens: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Mean of each sequence's tokens, ``(R, L, D)`` -> ``(num_sequences, D)``: the pooled
    representation of every packed example, computed with one scatter (no Python loop)."""
    flat_seg = packed.segments.reshape(-1)
    valid = flat_seg >= 0
    n_seq = len(packed.spans)
    flat = tokens.reshape(-1, tokens.shape[-1])[valid]
    sums = tokens.new_zeros(n_seq, tokens.shape[-1]).index_add_(0, flat_seg[valid], flat)
    counts = torch.bincount(flat_seg[valid], minlength=n_seq).clamp_min(1).to(tokens.dtype)
    return sums / counts[:, None]
