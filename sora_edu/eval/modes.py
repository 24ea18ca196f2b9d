"""Scores for the prompting modes (notebook 09), from the Shapes world's ground truth.

Each mode promises something measurable on a one-object video:

* image to video: the first frame *is* the image (PSNR), and the object then moves as asked;
* extend / connect / loop: no jump at a seam -- the object's centroid moves across the seam
  by about as much as it moves between any two frames (``seam_jump``, in pixels);
* connect: the result starts like ``a`` and ends like ``b`` (PSNR);
* edit: the attribute the prompt changes is changed, the others are kept.

Layouts: videos ``(3, T, H, W)`` in [-1, 1] (batches add ``B``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .world_score import describe, score


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def centroids(video: torch.Tensor) -> list[tuple[float, float] | None]:
    """The object's centroid ``(y, x)`` in every frame (None where it is not visible)."""
    return describe(video).get("track") or [None] * video.shape[1]


def seam_jump(video: torch.Tensor, at: int) -> float:
    """How far (pixels) the object's centroid moves from frame ``at - 1`` to frame ``at``,
    minus the median move between neighbouring frames elsewhere: ~0 for a seamless cut,
    large for a jump. ``inf`` when the object is missing at the seam."""
    if not 0 < at < video.shape[1]:
        raise ValueError(f"a seam must be inside the video (0 < at < {video.shape[1]}), got {at}")
    track = centroids(video)
    if track[at - 1] is None or track[at] is None:
        return float("inf")
    steps = [math.dist(p, q) for i, (p, q) in enumerate(zip(track[:-1], track[1:]))
             if p is not None and q is not None and i + 1 != at]
    typical = sorted(steps)[len(steps) // 2] if steps else 0.0
    return max(0.0, math.dist(track[at - 1], track[at]) - typical)


def loop_jump(video: torch.Tensor) -> float:
    """:func:`seam_jump` across the loop point: the last frame followed by the first."""
    return seam_jump(torch.cat([video, video[:, :1]], dim=1), video.shape[1])


def _median(values: Sequence[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def score_image_to_video(videos: torch.Tensor, images: torch.Tensor, asked: Sequence[dict], **vocabulary) -> dict:
    """First-frame PSNR (median over the batch) and the fraction whose object then does all
    the prompt asks (shape, colour, motion, ...)."""
    first = [psnr(v[:, 0], im) for v, im in zip(videos, images)]
    right = [score(v, a, **vocabulary)["all"] for v, a in zip(videos, asked)]
    return {"first_frame_psnr": _median(first), "fully_correct": sum(right) / len(right)}


def score_seams(videos: torch.Tensor, seams: Sequence[int]) -> dict:
    """Over the batch, each video's worst seam: the median jump (pixels) among videos whose
    object is visible at every seam, the fraction with no seam over 2 pixels (smooth), and
    the fraction whose object vanishes at a seam (lost)."""
    worst = [max(seam_jump(v, s) for s in seams) for v in videos]
    seen = [w for w in worst if w != float("inf")]
    return {"median_jump_px": _median(seen), "smooth": sum(w <= 2.0 for w in worst) / len(worst),
            "lost": 1 - len(seen) / len(worst)}


def score_edit(edited: torch.Tensor, asked: Sequence[dict], changed: str, **vocabulary) -> dict:
    """Accuracy of the ``changed`` attribute, and of all the others ``asked`` names (kept)."""
    scores = [score(v, a, **vocabulary) for v, a in zip(edited, asked)]
    kept = [all(s[k] for k in a if k != changed) for s, a in zip(scores, asked)]
    return {"changed": sum(s[changed] for s in scores) / len(scores), "kept": sum(kept) / len(kept)}


__all__ = ["centroids", "loop_jump", "psnr", "score_edit", "score_image_to_video", "score_seams", "seam_jump"]
