"""Layout first: plan where the object is in every frame, then draw the video there.

A two-stage text-to-video model, as in LLM-grounded Video Diffusion (Lian et al., arXiv
2309.17444) and VideoDirectorGPT (Lin et al., arXiv 2309.15091): a first stage turns the
prompt into a *layout*, the object's box in every frame; the video model is then
conditioned on that layout (GLIGEN's grounding, Li et al., arXiv 2301.07093, here as input
channels). Here the first stage is learned too: :class:`LayoutPlanner` is a small flow-
matching model over box trajectories, read from the world's ground truth, as the Shapes
world gives its captions.

What the layout buys (notebook 06's levers): the video model no longer has to decide where
the object goes and how it moves, and its loss can weigh the object's cells up without
moving the optimum (the weight depends on the condition, not on the target).

Layouts: ``boxes (B, T, 4)`` float, ``x0, y0, x1, y1`` in pixels (x right, y down, as
:class:`~sora_edu.data.worlds.WorldObject.box`); the planner works on them normalised to
[-1, 1] as ``(B, 4, T)``; :func:`box_coordinates` (and :func:`box_fourier`) turn them into
per-pixel maps that the video model reads on its latent grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..diffusion.embedding import TimestepEmbedder
from ..patches import sincos_1d
from .text import TextEncoder, text_inputs
from .vit import Block

REACH = 2.0  # box coordinates beyond this many half-sizes from the centre all read "far away"


def check_boxes(boxes: torch.Tensor, frames: int | None = None) -> None:
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or (frames is not None and boxes.shape[1] != frames):
        want = f"(B, {frames if frames is not None else 'T'}, 4)"
        raise ValueError(f"expected boxes {want} as x0, y0, x1, y1 in pixels, got shape {tuple(boxes.shape)}")
    if bool(((boxes[..., 2:] - boxes[..., :2]) <= 0).any()):
        raise ValueError("every box needs x1 > x0 and y1 > y0 (pixels)")


def _box_axes(boxes: torch.Tensor, height: int, width: int, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``boxes (B, T, 4)`` px -> ``u (B, T, W)``, ``v (B, T, H)``: each pixel column's (row's)
    place in its frame's box, ``(x - centre) / half-width``, clamped to ``±reach``. Both maps
    are separable, so the per-axis values are all there is to compute."""
    boxes = boxes.float()
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]) / 2
    xs = torch.arange(width, device=boxes.device) + 0.5
    ys = torch.arange(height, device=boxes.device) + 0.5
    u = ((xs - centre[..., :1]) / half[..., :1]).clamp(-reach, reach)
    v = ((ys - centre[..., 1:]) / half[..., 1:]).clamp(-reach, reach)
    return u, v


def box_coordinates(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``boxes (B, T, 4)`` px -> ``(B, 2, T, H, W)``: every pixel's position in its frame's
    box, ``(x - centre) / half-width`` and the same for y, clamped to ``±REACH``: 0 at the
    centre, ±1 on the box's edges. What the video model reads to draw inside the box."""
    check_boxes(boxes)
    u, v = _box_axes(boxes, height, width, REACH)
    b, t = boxes.shape[:2]
    return torch.stack([u[:, :, None, :].expand(b, t, height, width), v[:, :, :, None].expand(b, t, height, width)], 1)


FOURIER_REACH = 1.5  # the Fourier basis spans ±this many half-sizes: the box and a margin around it


def box_fourier(boxes: torch.Tensor, height: int, width: int, frequencies: int = 4, cell: int = 1,
                frame_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``boxes (B, T, 4)`` px -> ``(B, (2F + 1)**2, T, H / cell, W / cell)``: the 2D Fourier
    basis of every pixel's place in its frame's box (:func:`box_coordinates`, clamped to
    ``±FOURIER_REACH``), ``cos`` and ``sin`` of ``F = frequencies`` multiples of the base
    frequency per axis (and 1) multiplied across the axes, averaged over each ``cell x cell``
    block of pixels.

    Why: a shape drawn in its box covers a latent cell by the mean of its indicator over the
    cell's pixels, and an indicator is (nearly) a weighted sum of this basis; averaged over
    the cell, each shape's coverage is then a *linear* function of these channels, with the
    shape's own weights, where from the raw coordinates it is a sharp nonlinear one. Networks
    learn such high-frequency functions of coordinates slowly (spectral bias); Fourier
    features remove that (Tancik et al., "Fourier Features Let Networks Learn High Frequency
    Functions in Low Dimensional Domains", arXiv 2006.10739). The basis is separable, so each
    block's mean is the product of two 1D means: nothing is made at full resolution.

    ``frame_weights (T', T)`` (e.g. :meth:`~sora_edu.models.vae.VideoAutoencoder.frame_weights`)
    averages the frames too, ``(B, (2F + 1)**2, T', H / cell, W / cell)``, inside the same
    product, so the per-frame maps are never made either."""
    check_boxes(boxes)
    if frequencies < 1:
        raise ValueError(f"frequencies must be >= 1, got {frequencies}")
    if height % cell or width % cell:
        raise ValueError(f"H and W must be multiples of the cell ({cell}), got {height}x{width}")
    frames = boxes.shape[1]
    if frame_weights is None:
        frame_weights = torch.eye(frames)
    if frame_weights.ndim != 2 or frame_weights.shape[1] != frames:
        raise ValueError(f"frame_weights must be (T', {frames}) for {frames} frames of boxes, "
                         f"got shape {tuple(frame_weights.shape)}")
    k = torch.arange(1, frequencies + 1, device=boxes.device) * torch.pi / FOURIER_REACH

    def axis(place: torch.Tensor) -> torch.Tensor:  # (B, T, n) -> (B, T, n / cell, 2F + 1)
        angle = place[..., None] * k
        basis = torch.cat([torch.ones_like(angle[..., :1]), angle.cos(), angle.sin()], -1)
        return basis.unflatten(2, (place.shape[2] // cell, cell)).mean(3)

    u, v = _box_axes(boxes, height, width, FOURIER_REACH)
    across, down = axis(u), axis(v)  # (B, T, w, G), (B, T, h, F)
    # the outer product of the two axes' bases, summed over the frames with their weights:
    # one batched matmul over T per clip
    weighted = frame_weights.to(down)[None, :, :, None, None] * down[:, None]  # (B, T', T, h, F)
    return torch.einsum("bstif,btjg->bfgsij", weighted, across).flatten(1, 2)


def fourier_channels(frequencies: int) -> int:
    """Channels of :func:`box_fourier` with ``frequencies`` per axis."""
    return (2 * frequencies + 1) ** 2


class LayoutPlanner(nn.Module):
    """The layout stage's denoiser: ``forward(x (B, 4, T), t (B,), cond) -> (B, 4, T)``.

    ``x`` is a box trajectory (normalised, noised); ``cond = {"ids", "mask"}`` the caption.
    One token per frame (its box, its frame's sin-cos position, the time and the pooled
    caption added) attends to the caption's tokens and to the other frames: DiT's
    *in-context* conditioning, the cheapest of its four at a sequence this short.
    """

    def __init__(self, vocab_size: int, frames: int = 16, dim: int = 96, depth: int = 3, heads: int = 4,
                 text_depth: int = 2) -> None:
        super().__init__()
        self.frames, self.in_channels = frames, 4
        self.text = TextEncoder.of_width(vocab_size, dim, text_depth)
        self.box_in = nn.Linear(4, dim)
        self.register_buffer("positions", sincos_1d(torch.arange(frames, dtype=torch.float32), dim), persistent=False)
        self.time = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=2.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1:] != (4, self.frames):
            raise ValueError(f"expected box trajectories (B, 4, {self.frames}) (x0, y0, x1, y1 in [-1, 1]), "
                             f"got shape {tuple(x.shape)}")
        ids, mask = text_inputs(cond, "layout planner")
        words, pooled = self.text(ids, mask)
        frames = self.box_in(x.transpose(1, 2)) + self.positions.to(x) + (self.time(t) + pooled)[:, None]
        seq = torch.cat([words, frames], 1)
        keys = torch.cat([mask, torch.ones(len(x), self.frames, dtype=torch.bool, device=x.device)], 1)
        for block in self.blocks:
            seq = block(seq, keys[:, None, None, :])
        return self.out(self.norm(seq[:, -self.frames:])).transpose(1, 2)


__all__ = ["FOURIER_REACH", "LayoutPlanner", "REACH", "box_coordinates", "box_fourier", "check_boxes", "fourier_channels"]
