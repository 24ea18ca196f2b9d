"""Camera moves over real photographs: pans and zooms, captioned with subject and motion.

Real textures for the toy course, offline: the photos scikit-image ships inside its
package (an astronaut, a cat, coffee, a rocket, ...). A virtual camera of the output's
aspect ratio slides or zooms across the photo; ``grid_sample`` renders every frame in
one call. The per-frame camera window is the ground truth.

Layout: ``video: (C, T, H, W)`` in [-1, 1]; ``window: (T, 4)`` is ``x0, y0, x1, y1`` in
the photo's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .worlds import check_video_size, sample_rng

# scikit-image sample name -> what the caption calls it (all bundled with the package).
PHOTOS: dict[str, str] = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket on its launch pad",
    "hubble_deep_field": "galaxies in deep space",
    "camera": "a man with a camera",
    "immunohistochemistry": "stained tissue under a microscope",
    "coins": "old coins",
}
MOVES: tuple[str, ...] = ("left", "right", "up", "down", "in", "out")


@lru_cache(maxsize=None)
def load_photo(name: str) -> torch.Tensor:
    """A bundled photo as ``(3, H, W)`` float in [0, 1] (grey photos get three equal channels)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    import skimage.data

    image = torch.from_numpy(np.asarray(getattr(skimage.data, name)())).float() / 255.0
    if image.ndim == 2:
        image = image[..., None].expand(-1, -1, 3)
    return image[..., :3].permute(2, 0, 1).contiguous()


def camera_path(move: str, photo_hw: tuple[int, int], aspect: float, frames: int,
                rng: np.random.Generator, extent: float = 0.35) -> np.ndarray:
    """Camera windows ``(T, 4)`` (x0, y0, x1, y1, photo pixels) for one move.

    ``aspect`` is the output's width / height; ``extent`` is how far a pan travels, as a
    fraction of the photo side it moves along, or how much a zoom changes the window.
    """
    ph, pw = photo_hw
    # The largest window of the right aspect that fits, then shrink it to leave room to move.
    h_max = min(ph, pw / aspect)
    scale = rng.uniform(0.45, 0.65)
    h = h_max * scale
    w = h * aspect
    s = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    if move in ("in", "out"):
        size = h * (1 - extent * (s if move == "in" else 1 - s))  # "in": the window shrinks
        cx, cy = rng.uniform(pw / 2 - (pw - w) / 4, pw / 2 + (pw - w) / 4), rng.uniform(
            ph / 2 - (ph - h) / 4, ph / 2 + (ph - h) / 4)
        hs, ws = size, size * aspect
        return np.stack([cx - ws / 2, cy - hs / 2, cx + ws / 2, cy + hs / 2], axis=1)
    travel_x = min(extent * pw, pw - w) if move in ("left", "right") else 0.0
    travel_y = min(extent * ph, ph - h) if move in ("up", "down") else 0.0
    x_start = rng.uniform(0, pw - w - travel_x)
    y_start = rng.uniform(0, ph - h - travel_y)
    sign_x = {"left": -1, "right": 1}.get(move, 0)
    sign_y = {"up": -1, "down": 1}.get(move, 0)
    if sign_x < 0:
        x_start += travel_x
    if sign_y < 0:
        y_start += travel_y
    x0 = x_start + sign_x * travel_x * s
    y0 = y_start + sign_y * travel_y * s
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def render_window(photo: torch.Tensor, window: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Crop-and-resize ``photo (3, PH, PW)`` to each window: ``(3, T, height, width)`` in [0, 1]."""
    _, ph, pw = photo.shape
    win = torch.from_numpy(window).float()
    T = win.shape[0]
    # grid_sample's coordinates are -1..1 over the photo; build one affine grid per frame.
    cx = (win[:, 0] + win[:, 2]) / pw - 1
    cy = (win[:, 1] + win[:, 3]) / ph - 1
    sx = (win[:, 2] - win[:, 0]) / pw
    sy = (win[:, 3] - win[:, 1]) / ph
    theta = torch.zeros(T, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, [T, 3, height, width], align_corners=False)
    # Downscaling a big photo to a few pixels aliases badly: blur first by pooling.
    factor = max(1, int((win[:, 2] - win[:, 0]).min().item() / width / 2))
    source = F.avg_pool2d(photo[None], factor) if factor > 1 else photo[None]
    frames = F.grid_sample(source.expand(T, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    return frames.permute(1, 0, 2, 3).clamp(0, 1)


@dataclass
class PanSample:
    video: torch.Tensor  # (3, T, H, W) in [-1, 1]
    caption: str
    photo: str
    move: str
    window: np.ndarray  # (T, 4)
    index: int


class CameraPans(Dataset):
    """Seeded camera pans and zooms over scikit-image's bundled photos, any (T, H, W)."""

    def __init__(self, num_samples: int = 1000, frames: int = 16, height: int = 64, width: int = 64,
                 seed: int = 0, photos: tuple[str, ...] = tuple(PHOTOS), moves: tuple[str, ...] = MOVES) -> None:
        check_video_size(frames, height, width)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        for p in photos:
            if p not in PHOTOS:
                raise ValueError(f"unknown photo {p!r}; known: {', '.join(PHOTOS)}")
        for m in moves:
            if m not in MOVES:
                raise ValueError(f"unknown camera move {m!r}; known: {', '.join(MOVES)}")
        self.size, self.frames, self.height, self.width, self.seed = num_samples, frames, height, width, seed
        self.photos, self.moves = tuple(photos), tuple(moves)

    def __len__(self) -> int:
        return self.size

    def sample(self, i: int) -> PanSample:
        i, rng = sample_rng(self.seed, i, self.size)
        name = str(rng.choice(self.photos))
        move = str(rng.choice(self.moves))
        photo = load_photo(name)
        window = camera_path(move, tuple(photo.shape[1:]), self.width / self.height, self.frames, rng)
        video = render_window(photo, window, self.height, self.width) * 2 - 1
        return PanSample(video, caption_pan(name, move, self.frames), name, move, window, i)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        return {"video": s.video, "caption": s.caption, "index": i}


def caption_pan(photo: str, move: str, frames: int) -> str:
    subject = PHOTOS[photo]
    if frames == 1:
        return f"a photo of {subject}"
    if move == "in":
        return f"the camera zooms in on {subject}"
    if move == "out":
        return f"the camera zooms out from {subject}"
    return f"the camera pans {move} across {subject}"
