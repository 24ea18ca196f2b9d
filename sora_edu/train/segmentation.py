"""The world's segmentation as a training target, per latent cell.

The Shapes world renders, beside each video, how much of every pixel each shape covers
(:func:`sora_edu.data.worlds.render` with ``shape_maps=True``). Averaged over a latent
cell's pixels (:meth:`~sora_edu.models.vae.VideoAutoencoder.pool_to_latent`) that says,
cell by cell, what the cell shows: background, or which shape and how much of it. Two
modules learn from it: the autoencoder's shape-aware latent (``semantic_weight``) and the
denoiser's segmentation head (``segment_weight``). Both read it with the loss below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_classes(cells: torch.Tensor) -> torch.Tensor:
    """Pooled shape maps ``(B, S, ...)`` (each cell's coverage by each of S shapes) ->
    class fractions ``(B, 1 + S, ...)``, background first."""
    return torch.cat([(1 - cells.sum(1, keepdim=True)).clamp_min(0), cells], dim=1)


def balanced_soft_ce(logits: torch.Tensor, target: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Soft cross-entropy of ``logits`` against class fractions ``target`` (background the
    first class along ``dim``), the cells an object touches and the background-only cells
    averaged apart and added. A small object covers a few percent of the cells: averaged
    together, a model that calls every cell background would already score well."""
    ce = -(target * F.log_softmax(logits, dim=dim)).sum(dim)
    touched = target.select(dim, 0) < 1
    if not touched.any() or touched.all():
        return ce.mean()
    return ce[touched].mean() + ce[~touched].mean()
