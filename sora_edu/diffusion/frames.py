"""Masked frame conditioning: one model for every way Sora is prompted (notebook 09).

Sora's report extends videos forward and backward, animates images, connects two videos
and loops, all with one model. The recipe here: during training some latent frames of a
clip are given **clean** and the rest are noised as usual; the denoiser sees

    input = concat([where(mask, x0, x_t), mask], channel)      # (B, C + 1, T, H, W)

and is scored only on the frames it had to generate. The masks cover the prompting modes:

* ``none``       text to video (and, with ``T = 1``, text to image)
* ``first``      image to video (the first latent frame given)
* ``last``       a video that must end on a given frame
* ``prefix``     extend forward (the first k latent frames given)
* ``suffix``     extend backward (the last k given)
* ``both_ends``  connect two videos, and loops (a few frames at each end given)

At sampling the given frames are put back at every step and in the output, so they never
change. Alternatives, compared in notebook 09: replacing the known frames by their noised
version at every step of a model never trained with masks (RePaint-style inpainting,
Lugmayr et al., arXiv 2201.09865, no training needed but the model never learns to
*continue* what it is given), and concatenating the image's latent to every frame's
channels (Stable Video Diffusion, Blattmann et al., arXiv 2311.15127: image-to-video only).

Layouts: latents ``(B, C, T, H, W)``; masks ``(B, T)`` bool, True = given.
"""

from __future__ import annotations

from typing import Sequence

import torch

MASKS = ("none", "first", "last", "prefix", "suffix", "both_ends")


def frame_mask(kind: str, frames: int, k: int = 1, k_end: int | None = None) -> torch.Tensor:
    """The ``(T,)`` bool mask of a kind: ``prefix``/``suffix`` give ``k`` frames,
    ``both_ends`` ``k`` at the start and ``k_end`` (default ``k``) at the end. At least one
    frame is always left to generate."""
    if kind not in MASKS:
        raise ValueError(f"mask kind must be one of {MASKS}, got {kind!r}")
    m = torch.zeros(frames, dtype=torch.bool)
    if kind == "none":
        return m
    if frames < 2:
        raise ValueError(f"a {kind!r} mask needs at least 2 latent frames (one given, one generated), got {frames}")
    k_end = k if k_end is None else k_end
    if kind == "first":
        m[0] = True
    elif kind == "last":
        m[-1] = True
    elif kind == "prefix":
        m[:k] = True
    elif kind == "suffix":
        m[frames - k:] = True
    else:
        m[:k] = True
        m[frames - k_end:] = True
    if m.all():
        raise ValueError(f"a {kind!r} mask with k={k}, k_end={k_end} gives all {frames} frames: nothing to generate")
    return m


def random_frame_masks(uniforms: torch.Tensor, frames: int, kinds: Sequence[str]) -> torch.Tensor:
    """``(B, T)`` masks from ``uniforms (B, 3)`` in [0, 1): the first picks a kind among
    ``kinds`` (equally likely), the others the number of given frames (1 to T - 1, and
    for both ends at most T - 1 in all). With ``T = 1`` (images) every mask is ``none``."""
    if frames < 2:
        return torch.zeros(len(uniforms), frames, dtype=torch.bool)
    masks = []
    for u in uniforms.tolist():
        kind = kinds[min(int(u[0] * len(kinds)), len(kinds) - 1)]
        if kind == "both_ends" and frames < 3:
            kind = "first"  # two frames cannot have two given ends and a middle
        if kind == "both_ends":
            k = 1 + int(u[1] * (frames - 2))          # 1 .. T-2 at the start
            k_end = 1 + int(u[2] * (frames - 1 - k))  # 1 .. T-1-k at the end: one frame is left
            masks.append(frame_mask(kind, frames, k, k_end))
        else:
            masks.append(frame_mask(kind, frames, 1 + int(u[1] * (frames - 1))))
    return torch.stack(masks)


def masked_input(x_t: torch.Tensor, given: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The denoiser's input: the given frames clean, the others noisy, plus the mask as one
    more channel. ``x_t, given (B, C, T, H, W)``, ``mask (B, T)``."""
    if mask.shape != (x_t.shape[0], x_t.shape[2]):
        raise ValueError(f"expected a mask (B, T) = {(x_t.shape[0], x_t.shape[2])}, got {tuple(mask.shape)}")
    m = mask[:, None, :, None, None].to(x_t.dtype)
    x = torch.where(m.bool(), given, x_t)
    return torch.cat([x, m.expand(-1, 1, -1, *x_t.shape[-2:])], dim=1)


__all__ = ["MASKS", "frame_mask", "masked_input", "random_frame_masks"]
