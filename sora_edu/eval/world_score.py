"""The world-truth scorer: does a generated video show what its prompt asked for?

Analytic, because the Shapes world is: flat colours on a flat background. For a video of
one object it estimates every attribute a prompt can name and compares:

* **background**: the median colour of the clip, nearest of the world's backgrounds;
* **present / colour**: pixels far from the background are the object; the median colour
  of its interior (the half of those pixels farthest from the background: edges blend
  with the background), nearest of the world's colours;
* **shape and size** together: the object's soft mask is matched against the world's own
  anti-aliased shape templates (every shape at both sizes, at small shifts around the
  mask's centroid); the best soft IoU wins;
* **motion**: the centroid track: still (it barely moves), left / right / up / down (one
  axis moves), bounce (both axes move: the world's bounces are diagonal).

A world that uses fewer shapes, colours or motions than the renderer knows (the
text-to-video world does) passes them as ``shapes=`` / ``colours=`` / ``motions=``: the
scorer then chooses among those only, as any closed-set judge would.

Layout: ``video (3, T, H, W)`` in [-1, 1]. Validated on renders in ``tests/test_eval.py``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.worlds import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES, _sdf

ATTRIBUTES = ("present", "shape", "colour", "size", "motion", "background")


def _nearest(colour: torch.Tensor, table: dict) -> str:
    names = list(table)
    palette = torch.tensor([table[n] for n in names])
    return names[int((palette - colour).pow(2).sum(-1).argmin())]


def _pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")


def _templates(ys: torch.Tensor, xs: torch.Tensor, cy: float, cx: float, shapes: Sequence[str] = SHAPES,
               shift: int = 2) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """Coverage masks ``(K, S, H, W)`` of every (shape, size) at S shifted centres, on the
    pixel-centre grid ``ys, xs (H, W)``."""
    height, width = ys.shape
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    keys, masks = [], []
    for shape in shapes:
        for size, frac in SIZES.items():
            r = torch.tensor(frac * min(height, width))
            per = [(0.5 - _sdf(shape, xs - (cx + dx), ys - (cy + dy), r)).clamp(0, 1) for dy, dx in offsets]
            keys.append((shape, size))
            masks.append(torch.stack(per))
    return keys, torch.stack(masks)


@torch.no_grad()
def describe(video: torch.Tensor, min_area: float = 4.0, shapes: Sequence[str] = SHAPES,
             colours: Sequence[str] = tuple(COLOURS), motions: Sequence[str] = MOTIONS) -> dict:
    """Estimate the attributes of the (single) object in ``video (3, T, H, W)`` in [-1, 1],
    choosing among ``shapes``, ``colours`` and ``motions``."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected one video (3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    rgb = ((video.float() + 1) / 2).clamp(0, 1)
    _, frames, height, width = rgb.shape
    background = rgb.flatten(1).median(dim=1).values
    dist = (rgb - background[:, None, None, None]).pow(2).sum(0).sqrt()  # (T, H, W)
    core = dist > 0.25
    out = {"background": _nearest(background, BACKGROUNDS), "present": False,
           "shape": None, "colour": None, "size": None, "motion": None}
    visible = core.flatten(1).sum(1) >= min_area
    if visible.float().mean() < 0.5:
        return out
    out["present"] = True
    far = dist[core]
    interior = rgb.permute(1, 2, 3, 0)[core][far >= far.median()]
    colour = interior.median(dim=0).values
    out["colour"] = _nearest(colour, {c: COLOURS[c] for c in colours})
    # Soft object mask: 0 on the background, 1 on the object's colour.
    span = (colour - background).norm().clamp_min(1e-3)
    soft = (dist / span).clamp(0, 1)
    ys, xs = _pixel_centres(height, width)
    track = []
    for t in range(frames):
        w = soft[t] * core[t]
        track.append((float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())) if visible[t] else None)
    # Shape and size: vote over a few visible frames.
    votes: dict[tuple[str, str], float] = {}
    for t in [int(i) for i in torch.nonzero(visible).flatten()][:: max(1, frames // 4)]:
        keys, masks = _templates(ys, xs, *track[t], shapes=shapes)
        obs = soft[t][None, None]
        iou = torch.minimum(masks, obs).flatten(2).sum(-1) / torch.maximum(masks, obs).flatten(2).sum(-1)
        best = iou.max(dim=1).values
        for key, value in zip(keys, best.tolist()):
            votes[key] = votes.get(key, 0.0) + value
    out["shape"], out["size"] = max(votes, key=votes.get)
    out["motion"] = read_motion([p for p in track if p is not None], min(height, width), motions)
    out["track"] = track
    return out


def read_motion(track: Sequence[tuple[float, float]], side: int, motions: Sequence[str] = MOTIONS) -> str:
    """Read a motion off a centroid track, choosing among ``motions``. Thresholds leave room
    for a generated object's wobble: the world's movers travel >= ~0.4 of the frame's side,
    so a range under 0.1 of it is "still"; "bounce" (diagonal in this world) needs both
    axes to move, the lesser by at least a quarter of the greater."""
    ys = torch.tensor([p[0] for p in track])
    xs = torch.tensor([p[1] for p in track])
    still = 0.1 * side
    range_x, range_y = float(xs.max() - xs.min()), float(ys.max() - ys.min())
    major, minor = max(range_x, range_y), min(range_x, range_y)
    if major < still and "still" in motions:
        return "still"
    if "bounce" in motions and minor >= max(still, 0.25 * major):
        return "bounce"
    # The direction of travel: the slope of a least-squares line through the track.
    time = torch.arange(len(xs), dtype=torch.float32)
    time = time - time.mean()
    slope_x, slope_y = float((time * (xs - xs.mean())).sum()), float((time * (ys - ys.mean())).sum())
    if range_x >= range_y:
        return "right" if slope_x > 0 else "left"
    return "down" if slope_y > 0 else "up"


def score(video: torch.Tensor, asked: dict, **vocabulary) -> dict:
    """Per attribute the prompt names (keys of ``asked`` among shape, colour, size, motion,
    background): was it right? Plus ``present`` and ``all`` (every named one right).
    ``vocabulary`` (``shapes=``, ``colours=``, ``motions=``) goes to :func:`describe`."""
    seen = describe(video, **vocabulary)
    unknown = set(asked) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"cannot score {sorted(unknown)}; the scorer knows {ATTRIBUTES}")
    result = {"present": seen["present"]}
    for key, value in asked.items():
        if key != "present":
            result[key] = seen["present"] and seen[key] == value
    result["all"] = all(result.values())
    return result


def adherence(videos: torch.Tensor | Sequence[torch.Tensor], asked: Sequence[dict], **vocabulary) -> dict:
    """Accuracy per attribute over a batch, and the fraction **fully correct** (``"all"``)."""
    if len(videos) != len(asked):
        raise ValueError(f"{len(videos)} videos but {len(asked)} prompts")
    scores = [score(v, a, **vocabulary) for v, a in zip(videos, asked)]
    keys = sorted({k for s in scores for k in s})
    return {k: sum(s[k] for s in scores if k in s) / sum(k in s for s in scores) for k in keys}


__all__ = ["ATTRIBUTES", "adherence", "describe", "read_motion", "score"]
