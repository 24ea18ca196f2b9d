"""Moving digits: handwritten digits bouncing around a frame, captioned.

A Moving-MNIST-style world ("Unsupervised Learning of Video Representations using
LSTMs", Srivastava et al., arXiv 1502.04681) built from scikit-learn's bundled 8x8
digits (1,797 images, offline). Digit images 0-1499 are the ``train`` split and the
rest ``test``, so a classifier can be judged on digits it never saw.

Layout: ``video: (C, T, H, W)`` in [-1, 1], white digits on black, ``C`` = 3 (or 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .worlds import bounce_path, check_video_size, sample_rng

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_IMAGES = 1500


@lru_cache(maxsize=1)
def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as ``images: (N, 8, 8)`` in [0, 1] and ``labels: (N,)``."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    return torch.from_numpy(data.images / 16.0).float(), torch.from_numpy(data.target).long()


@dataclass
class DigitSample:
    video: torch.Tensor  # (C, T, H, W)
    caption: str
    labels: list[int]  # digit classes, in drawing order
    centres: np.ndarray  # (K, T, 2) pixel centres (x, y)
    boxes: np.ndarray  # (K, T, 4) x0, y0, x1, y1
    index: int


class MovingDigits(Dataset):
    """Seeded videos of 1-``max_digits`` digits bouncing off the frame's edges.

    ``digit_size`` is the side of a drawn digit as a fraction of the shorter frame side.
    ``__getitem__`` returns ``{"video", "caption", "label", "index"}`` (``label`` = the
    first digit's class); ``sample(i)`` returns the full :class:`DigitSample`.
    """

    def __init__(self, num_samples: int = 1000, frames: int = 16, height: int = 64, width: int = 64,
                 seed: int = 0, split: str = "train", max_digits: int = 2, digit_size: float = 0.4,
                 speed: float = 0.05, channels: int = 3) -> None:
        check_video_size(frames, height, width)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= max_digits <= 3:
            raise ValueError(f"max_digits must be 1, 2 or 3, got {max_digits!r}")
        if not 0.1 <= digit_size <= 0.9:
            raise ValueError(f"digit_size must be in [0.1, 0.9], got {digit_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.size, self.frames, self.height, self.width = num_samples, frames, height, width
        self.seed, self.split, self.max_digits = seed, split, max_digits
        self.digit_size, self.speed, self.channels = digit_size, speed, channels
        images, labels = load_digits()
        pool = slice(0, TRAIN_IMAGES) if split == "train" else slice(TRAIN_IMAGES, None)
        self.images, self.labels = images[pool], labels[pool]

    def __len__(self) -> int:
        return self.size

    def sample(self, i: int) -> DigitSample:
        i, rng = sample_rng(self.seed, i, self.size)
        T, H, W = self.frames, self.height, self.width
        side = max(4, round(self.digit_size * min(H, W)))
        n = int(rng.integers(1, self.max_digits + 1))
        picks = rng.integers(len(self.images), size=n)
        half = side / 2
        lo, hi = np.array([half, half]), np.array([W - half, H - half])
        t = np.arange(T, dtype=np.float64)
        centres = np.stack([bounce_path(rng, lo, hi, t, self.speed * min(H, W)) for _ in range(n)])
        glyphs = F.interpolate(self.images[picks][:, None], size=(side, side), mode="bilinear",
                               align_corners=False).clamp(0, 1)[:, 0]  # (n, side, side)
        frame = torch.zeros(T, H, W)
        # Paste each glyph at its rounded top-left corner; overlapping digits add up (then clip).
        corners = np.round(centres - half).astype(int)
        for k in range(n):
            for f in range(T):
                x0, y0 = corners[k, f]
                frame[f, y0:y0 + side, x0:x0 + side] += glyphs[k]
        video = frame.clamp(0, 1)[None].expand(self.channels, T, H, W) * 2 - 1
        labels = [int(self.labels[p]) for p in picks]
        boxes = np.concatenate([corners, corners + side], axis=-1).astype(np.float64)
        return DigitSample(video.contiguous(), caption_digits(labels, T), labels,
                           corners + half, boxes, i)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        return {"video": s.video, "caption": s.caption, "label": s.labels[0], "index": i}


def caption_digits(labels: list[int], frames: int) -> str:
    """'the digits 3 and 7 bounce around' (or 'the digit 3' alone for a still image)."""
    names = [str(d) for d in labels]
    if len(names) == 1:
        subject = f"the digit {names[0]}"
    else:
        subject = "the digits " + ", ".join(names[:-1]) + " and " + names[-1]
    if frames == 1:
        return subject
    return subject + (" bounces around" if len(names) == 1 else " bounce around")
