"""The Shapes world: procedural videos with captions and exact ground truth.

Every video is rendered from a small *scene*: 1-3 objects, each with a shape, colour,
size and motion, on a coloured background, optionally with a wall (an occluder) that
objects pass behind and a camera that pans. Because we know the scene, we know the truth
of every frame (each object's centre, box and how much of it is visible), and we can
write two kinds of caption for it:

* a **detailed caption** that names every attribute, the kind of text Sora's
  recaptioner produces ("a small red circle moves right across a navy background"), and
* a short **alt-text** caption that is incomplete and sometimes wrong, like the text
  scraped next to web videos ("red thing"), with configurable probabilities.

Layouts: ``video: (C, T, H, W)`` (a batch adds ``B`` in front) float in [-1, 1]; pixel
coordinates are ``(x, y)`` with ``x`` to the right and ``y`` *down*, pixel centres at
``i + 0.5``. Sample ``i`` of a dataset with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``, so it is the same on every machine.

Reference: "Video generation models as world simulators" (OpenAI, 2024) trains on
recaptioned videos; DALL-E 3 ("Improving Image Generation with Better Captions", 2023)
introduced the detailed-vs-alt-text recaptioning this world lets us measure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

# --- the world's vocabulary -------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.40, 1.00),
    "yellow": (0.98, 0.90, 0.10),
    "purple": (0.62, 0.22, 0.90),
    "orange": (1.00, 0.55, 0.00),
    "cyan": (0.10, 0.88, 0.92),
    "white": (0.96, 0.96, 0.96),
}
# Backgrounds are dark so that every object colour stands out against every background.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.30, 0.30, 0.30),
    "navy": (0.04, 0.05, 0.32),
    "maroon": (0.36, 0.05, 0.08),
    "olive": (0.28, 0.30, 0.04),
}
# Radius as a fraction of the frame's shorter side.
SIZES: dict[str, float] = {"small": 0.11, "large": 0.2}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bounce")
PANS: tuple[str, ...] = ("left", "right", "up", "down")
WALL_COLOUR = (0.80, 0.74, 0.60)
MOTION_PHRASES = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "still": "stays still",
    "bounce": "bounces around",
}
# Unit direction of each straight motion in pixel coordinates (y grows downwards).
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


# --- configuration ----------------------------------------------------------------------


def _check_vocab(kind: str, values: Sequence[str], known: Sequence[str]) -> None:
    if len(values) == 0:
        raise ValueError(f"{kind} must not be empty")
    for v in values:
        if v not in known:
            raise ValueError(f"unknown {kind[:-1] if kind.endswith('s') else kind} {v!r}; known: {', '.join(known)}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


@dataclass(frozen=True)
class AltTextConfig:
    """How alt-text goes wrong. Each probability is applied independently per caption."""

    p_generic_noun: float = 0.4  # "red thing" instead of "red circle"
    p_drop_colour: float = 0.3
    p_wrong_colour: float = 0.1
    p_wrong_shape: float = 0.1
    p_mention_motion: float = 0.2  # alt-text rarely describes what happens
    p_filler: float = 0.3  # "stock footage", "video", ...

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            _check_probability(name, value)


@dataclass(frozen=True)
class WorldConfig:
    """What the Shapes world may contain. Every vocabulary is a subset of the module's.

    ``speed`` is in frame-shorter-sides per frame; a straight mover also never leaves
    the frame, so over a long clip it moves more slowly than ``speed``.
    """

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = tuple(SIZES)
    motions: tuple[str, ...] = MOTIONS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    min_objects: int = 1
    max_objects: int = 3
    p_occluder: float = 0.2
    p_pan: float = 0.2
    speed: float = 0.04
    pan_extent: float = 0.25  # total camera travel over a clip, in frame sides
    alt_text: AltTextConfig = field(default_factory=AltTextConfig)

    def __post_init__(self) -> None:
        _check_vocab("shapes", self.shapes, SHAPES)
        _check_vocab("colours", self.colours, tuple(COLOURS))
        _check_vocab("sizes", self.sizes, tuple(SIZES))
        _check_vocab("motions", self.motions, MOTIONS)
        _check_vocab("backgrounds", self.backgrounds, tuple(BACKGROUNDS))
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 3, got min_objects={self.min_objects}, "
                f"max_objects={self.max_objects}"
            )
        _check_probability("p_occluder", self.p_occluder)
        _check_probability("p_pan", self.p_pan)
        if self.speed < 0:
            raise ValueError(f"speed must be >= 0, got {self.speed!r}")
        if not 0 <= self.pan_extent < 0.5:
            raise ValueError(f"pan_extent must be in [0, 0.5), got {self.pan_extent!r}")


def sample_rng(seed: int, index: int, size: int) -> tuple[int, np.random.Generator]:
    """The generator of sample ``index`` of a seeded dataset of ``size`` samples (negative
    indices count from the end): it depends only on ``(seed, index)``, never on access order."""
    if not -size <= index < size:
        raise IndexError(f"index {index} out of range for a dataset of {size} samples")
    index %= size
    return index, np.random.default_rng([seed, index])


def check_video_size(frames: int, height: int, width: int) -> None:
    """Raise ``ValueError`` naming the bad value unless ``frames, height, width`` are usable."""
    for name, value, least in (("frames", frames, 1), ("height", height, 8), ("width", width, 8)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


# --- scenes -----------------------------------------------------------------------------


@dataclass
class WorldObject:
    """One object and its per-frame truth (pixel coordinates, y down)."""

    shape: str
    colour: str
    size: str
    motion: str
    radius: float  # pixels
    centre: np.ndarray  # (T, 2) on screen, float
    visibility: np.ndarray | None = None  # (T,) fraction of the shape's area seen, set by render
    passes_behind_wall: bool = False  # set by render from the visibility

    @property
    def box(self) -> np.ndarray:
        """(T, 4) box ``x0, y0, x1, y1`` of the whole shape (hidden parts included), clipped to nothing."""
        left, top, right, bottom = half_extents(self.shape, self.radius)
        x, y = self.centre[:, 0], self.centre[:, 1]
        return np.stack([x - left, y - top, x + right, y + bottom], axis=1)

    def phrase(self, frames: int) -> str:
        words = f"a {self.size} {self.colour} {self.shape}"
        if frames > 1:
            words += f" {MOTION_PHRASES[self.motion]}"
            if self.passes_behind_wall:
                words += " and passes behind a wall"
        return words


@dataclass
class Scene:
    """A video's content: objects (drawn in order, later ones in front), background, extras."""

    objects: list[WorldObject]
    background: str
    frames: int
    height: int
    width: int
    wall_x: float | None = None  # wall centre in world x, pixels; None = no wall
    wall_width: float = 0.0
    pan: str | None = None
    camera: np.ndarray = field(default_factory=lambda: np.zeros((1, 2)))  # (T, 2) world offset

    @property
    def has_wall(self) -> bool:
        return self.wall_x is not None

    def truth(self) -> dict:
        """The per-frame ground truth as plain JSON-ready lists (what ``sora-edu worlds`` writes)."""
        r = lambda a: np.round(np.asarray(a, dtype=np.float64), 3).tolist()  # noqa: E731
        return {
            "background": self.background,
            "pan": self.pan,
            "camera": r(np.broadcast_to(self.camera, (self.frames, 2))),
            "wall": None if self.wall_x is None else {"x": round(self.wall_x, 3), "width": round(self.wall_width, 3)},
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "motion": o.motion,
                 "radius": round(o.radius, 3), "passes_behind_wall": o.passes_behind_wall,
                 "centre": r(o.centre), "box": r(o.box),
                 "visibility": r(o.visibility) if o.visibility is not None else None}
                for o in self.objects
            ],
        }

    def caption(self) -> str:
        """The detailed caption: every object, its attributes, the background and the camera.

        Grammar (what :func:`parse_caption` reads back)::

            <object 0> across|on a(n) <background> background
            [while|with <object 1>[, <object 2>] and <object N>]     ("with" for a still image)
            [, with a wall in the scene][, as the camera pans <direction>]
        """
        first, *others = [o.phrase(self.frames) for o in self.objects]
        moving = self.frames > 1 and self.objects[0].motion != "still"
        text = f"{first} {'across' if moving else 'on'} {_article(self.background)} {self.background} background"
        if others:
            listed = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
            text += (" while " if self.frames > 1 else " with ") + listed
        if self.has_wall and not any(o.passes_behind_wall for o in self.objects):
            text += ", with a wall in the scene"
        if self.pan is not None and self.frames > 1:
            text += f", as the camera pans {self.pan}"
        return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def half_extents(shape: str, r: float) -> tuple[float, float, float, float]:
    """Distances from the centre to the left, top, right and bottom edges of a shape."""
    if shape == "triangle":  # equilateral, apex up, circumradius r, centre at the centroid
        return (r * math.sqrt(3) / 2, r, r * math.sqrt(3) / 2, r / 2)
    return (r, r, r, r)


def shape_area(shape: str, r: float) -> float:
    """Exact area of a shape of radius ``r`` (used to turn visible pixels into a fraction)."""
    areas = {
        "circle": math.pi,
        "square": 4.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "diamond": 2.0,
        "cross": 8 / 3 - 4 / 9,  # two 2r x 2r/3 bars, overlap counted once
    }
    return areas[shape] * r * r


def _straight_path(rng, lo, hi, travel, direction):
    """Start and end of a straight path of length ``<= travel`` inside ``[lo, hi]`` along one axis."""
    room = hi - lo
    length = min(travel, 0.85 * room)
    start = rng.uniform(lo, hi - length)
    if direction < 0:
        start = hi - (start - lo)
    return start, length


def bounce_path(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, t: np.ndarray, speed: float) -> np.ndarray:
    """Centres ``(T, 2)`` of a ball bouncing inside the box ``lo..hi`` (per axis, pixels).

    The heading is diagonal (never close to an axis, so both coordinates change) and
    each bounce is a mirror reflection: unfold the straight path, then fold it back.
    """
    angle = rng.integers(4) * math.pi / 2 + math.pi / 4 + rng.uniform(-math.pi / 10, math.pi / 10)
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    start = rng.uniform(lo, hi)
    unfolded = start[None, :] + velocity[None, :] * t[:, None] - lo[None, :]
    span = np.maximum(hi - lo, 1e-6)[None, :]
    folded = np.mod(unfolded, 2 * span)
    return lo[None, :] + span - np.abs(span - folded)


def _place(rng, config: WorldConfig, shape, colour, size, motion, frames, height, width, window):
    """Sample a trajectory for one object inside ``window = (x_lo, y_lo, x_hi, y_hi)`` (world px)."""
    r = SIZES[size] * min(height, width)
    left, top, right, bottom = half_extents(shape, r)
    lo = np.array([window[0] + left, window[1] + top])
    hi = np.array([window[2] - right, window[3] - bottom])
    if np.any(hi <= lo):
        raise ValueError(f"a {size} {shape} does not fit in a {height}x{width} frame")
    t = np.arange(frames, dtype=np.float64)
    speed = config.speed * min(height, width)
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        axis = 0 if dx != 0 else 1
        sign = dx + dy
        start, length = _straight_path(rng, lo[axis], hi[axis], speed * max(frames - 1, 0), sign)
        step = sign * (length / max(frames - 1, 1))
        centre = np.empty((frames, 2))
        centre[:, axis] = start + step * t
        centre[:, 1 - axis] = rng.uniform(lo[1 - axis], hi[1 - axis])
    elif motion == "bounce":
        centre = bounce_path(rng, lo, hi, t, speed)
    else:
        centre = np.repeat(rng.uniform(lo, hi)[None, :], frames, axis=0)
    return WorldObject(shape, colour, size, motion, r, centre)


def _apart(a: WorldObject, b: WorldObject) -> bool:
    """True when two objects never overlap much, so neither hides the other."""
    gap = np.linalg.norm(a.centre - b.centre, axis=1).min()
    return gap >= 0.9 * (a.radius + b.radius)


def sample_scene(
    rng: np.random.Generator, config: WorldConfig, frames: int, height: int, width: int, **fixed
) -> Scene:
    """Draw a random scene. ``fixed`` may pin attributes of the first object
    (``shape=, colour=, size=, motion=``) or of the scene (``background=, n_objects=,
    wall=, pan=``), which is how a prompt picks what it wants."""
    check_video_size(frames, height, width)
    unknown = set(fixed) - {"shape", "colour", "size", "motion", "background", "n_objects", "wall", "pan"}
    if unknown:
        raise ValueError(f"unknown scene attribute(s) {sorted(unknown)}")
    for key, vocab in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", tuple(SIZES)),
                       ("motion", MOTIONS), ("background", tuple(BACKGROUNDS))):
        if key in fixed and fixed[key] not in vocab:
            raise ValueError(f"unknown {key} {fixed[key]!r}; known: {', '.join(vocab)}")
    if "n_objects" in fixed and fixed["n_objects"] not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, got {fixed['n_objects']!r}")
    n = fixed.get("n_objects") or int(rng.integers(config.min_objects, config.max_objects + 1))
    background = fixed.get("background") or str(rng.choice(config.backgrounds))
    pan = fixed["pan"] if "pan" in fixed else (str(rng.choice(PANS)) if rng.random() < config.p_pan else None)
    if pan is not None and pan not in PANS:
        raise ValueError(f"unknown pan {pan!r}; known: {', '.join(PANS)}")
    wall = fixed["wall"] if "wall" in fixed else bool(rng.random() < config.p_occluder)
    if frames == 1:
        pan = None  # a still image has no camera motion

    # The camera moves by `travel` pixels; objects live in the part of the world that the
    # camera sees in every frame, so a pan never pushes an object out of view.
    camera = np.zeros((frames, 2))
    window = [0.0, 0.0, float(width), float(height)]
    if pan is not None:
        dx, dy = _DIRECTIONS[pan]
        travel = config.pan_extent * np.array([width, height])
        camera = np.stack([dx * travel[0], dy * travel[1]])[None, :] * (np.arange(frames) / (frames - 1))[:, None]
        shift = camera[-1]
        window = [max(0, shift[0]), max(0, shift[1]), width + min(0, shift[0]), height + min(0, shift[1])]

    def pick(k: int, key: str, vocab: Sequence[str]) -> str:
        return fixed[key] if (k == 0 and key in fixed) else str(rng.choice(vocab))

    objects: list[WorldObject] = []
    used = set()
    for k in range(n):
        for _attempt in range(30):  # rejection sampling; an object that never fits is left out
            attrs = (pick(k, "shape", config.shapes), pick(k, "colour", config.colours),
                     pick(k, "size", config.sizes), pick(k, "motion", config.motions))
            if attrs[:2] in used:  # two identical-looking objects would make captions ambiguous
                continue
            obj = _place(rng, config, *attrs, frames, height, width, window)
            if all(_apart(obj, other) for other in objects):
                objects.append(obj)
                used.add(attrs[:2])
                break
    scene = Scene(objects, background, frames, height, width, pan=pan, camera=camera)
    if wall:
        _place_wall(rng, scene, window)
    # Objects are sampled in world coordinates; the truth is what the screen shows.
    for obj in scene.objects:
        obj.centre = obj.centre - camera
    return scene


def _place_wall(rng, scene: Scene, window) -> None:
    """Put a vertical wall across the path of the first left/right mover (or at random).

    Every other object must stay clear of the wall, or it could be hidden for the whole
    clip and its caption would describe something nobody can see; those are dropped.
    """
    scene.wall_width = 0.15 * scene.width
    half = scene.wall_width / 2

    def band(obj: WorldObject) -> tuple[float, float]:
        left, _, right, _ = half_extents(obj.shape, obj.radius)
        return obj.centre[:, 0].min() - left, obj.centre[:, 0].max() + right

    def clear(obj: WorldObject, x: float) -> bool:
        lo, hi = band(obj)
        return hi < x - half or lo > x + half

    def crosses(obj: WorldObject) -> bool:
        # Long enough a path to be wholly visible on both sides of the wall.
        left, _, right, _ = half_extents(obj.shape, obj.radius)
        return obj.motion in ("left", "right") and np.ptp(obj.centre[:, 0]) > scene.wall_width + left + right

    target = next((o for o in scene.objects if crosses(o)), None)
    if target is not None:
        x = float(target.centre[:, 0].mean())
    else:
        target = None
        candidates = rng.uniform(window[0] + half, window[2] - half, size=20)
        x = next((float(c) for c in candidates if clear(scene.objects[0], c)), None)
        if x is None:
            return  # no room for a wall beside the main object: leave it out
    if target is not scene.objects[0] and not clear(scene.objects[0], x):
        return
    scene.wall_x = x
    scene.objects = [o for o in scene.objects if o is target or o is scene.objects[0] or clear(o, x)]


# --- rendering --------------------------------------------------------------------------


def _sdf(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) from each pixel to a shape's outline."""
    ax, ay = dx.abs(), dy.abs()
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return torch.maximum(ax, ay) - r
    if shape == "diamond":
        return (ax + ay - r) * (1 / math.sqrt(2))
    if shape == "triangle":
        s = math.sqrt(3) / 2
        return torch.maximum(dy, s * ax - 0.5 * dy) - 0.5 * r
    if shape == "cross":
        arm = r / 3
        return torch.minimum(torch.maximum(ax - r, ay - arm), torch.maximum(ax - arm, ay - r))
    raise ValueError(f"unknown shape {shape!r}")


def _colour(table: dict, name: str) -> torch.Tensor:
    return torch.tensor(table[name], dtype=torch.float32)


def render(scenes: Sequence[Scene], shape_maps: bool = False):
    """Render scenes of one size to ``(B, 3, T, H, W)`` in [-1, 1], vectorised over the batch.

    Also fills in each object's ``visibility`` (fraction of its area on screen and not
    covered by a later object or the wall) and ``passes_behind_wall``. ``shape_maps=True``
    also returns, per pixel, how much of it each shape covers where it is seen
    ``(B, len(SHAPES), T, H, W)`` in [0, 1] (the rest is background or wall): the
    ground-truth segmentation a shape-aware autoencoder learns to carry in its latents.
    """
    if len(scenes) == 0:
        raise ValueError("render needs at least one scene")
    T, H, W = scenes[0].frames, scenes[0].height, scenes[0].width
    if any((s.frames, s.height, s.width) != (T, H, W) for s in scenes):
        raise ValueError("render expects scenes of one (T, H, W); render different sizes separately")
    B = len(scenes)
    xs = torch.arange(W, dtype=torch.float32) + 0.5
    ys = torch.arange(H, dtype=torch.float32) + 0.5
    camera = torch.from_numpy(np.stack([np.broadcast_to(s.camera, (T, 2)) for s in scenes])).float()  # (B, T, 2)

    # Background, textured when the camera pans so that the pan is visible.
    bg = torch.stack([_colour(BACKGROUNDS, s.background) for s in scenes])  # (B, 3)
    video = bg[:, :, None, None, None].expand(B, 3, T, H, W).clone()
    panned = torch.tensor([s.pan is not None for s in scenes])
    if panned.any():
        cell = min(H, W) / 4
        wx = (xs[None, None, None, :] + camera[:, :, 0, None, None]) / cell  # (B, T, 1, W)
        wy = (ys[None, None, :, None] + camera[:, :, 1, None, None]) / cell  # (B, T, H, 1)
        checker = torch.sin(math.pi * wx) * torch.sin(math.pi * wy)  # (B, T, H, W)
        texture = 0.08 * torch.tanh(4 * checker) * panned[:, None, None, None]
        video = (video + texture[:, None]).clamp(0, 1)

    # Per-layer coverage: layer k holds the k-th object of every scene (zero if absent).
    K = max(len(s.objects) for s in scenes)
    alphas = []
    for k in range(K):
        idx = [b for b, s in enumerate(scenes) if len(s.objects) > k]
        objs = [scenes[b].objects[k] for b in idx]
        centre = torch.from_numpy(np.stack([o.centre for o in objs])).float()  # (N, T, 2)
        dx = xs[None, None, None, :] - centre[:, :, 0, None, None]  # (N, T, 1, W)
        dy = ys[None, None, :, None] - centre[:, :, 1, None, None]  # (N, T, H, 1)
        radius = torch.tensor([o.radius for o in objs])[:, None, None, None]
        shapes = [o.shape for o in objs]
        alpha = torch.zeros(B, T, H, W) if len(idx) < B else None
        for shape in set(shapes):
            sel = [i for i, s in enumerate(shapes) if s == shape]
            if len(sel) == B:  # the common case of a single shape: no gather, no scatter
                # Anti-aliased coverage: a pixel is covered in proportion to how far inside it is.
                alpha = _sdf(shape, dx, dy, radius).neg_().add_(0.5).clamp_(0, 1)
            else:
                t_sel = torch.tensor(sel)
                cover = _sdf(shape, dx[t_sel], dy[t_sel], radius[t_sel]).neg_().add_(0.5).clamp_(0, 1)
                if alpha is None:
                    alpha = torch.zeros(B, T, H, W)
                alpha[torch.tensor([idx[i] for i in sel])] = cover
        colour = torch.zeros(B, 3)
        colour[idx] = torch.stack([_colour(COLOURS, o.colour) for o in objs])
        video.lerp_(colour[:, :, None, None, None].expand_as(video), alpha[:, None])
        alphas.append(alpha)

    wall = None
    walled = [b for b, s in enumerate(scenes) if s.has_wall]
    if walled:
        wx = torch.tensor([scenes[b].wall_x for b in walled])[:, None, None, None]
        half = torch.tensor([scenes[b].wall_width / 2 for b in walled])[:, None, None, None]
        screen_x = xs[None, None, None, :] + camera[walled, :, 0, None, None]  # (N, T, 1, W)
        wall = torch.zeros(B, T, 1, W)
        wall[walled] = (0.5 - ((screen_x - wx).abs() - half)).clamp(0, 1)
        wall_colour = torch.tensor(WALL_COLOUR)[None, :, None, None, None].expand_as(video)
        video.lerp_(wall_colour, wall[:, None].expand(B, 1, T, H, W))

    # Visibility: what is left of each object after everything drawn in front of it.
    in_front = torch.ones(B, T, H, W) if wall is None else (1 - wall).expand(B, T, H, W).contiguous()
    maps = torch.zeros(B, len(SHAPES), T, H, W) if shape_maps else None
    for k in reversed(range(K)):
        visible = alphas[k] * in_front  # (B, T, H, W)
        seen = visible.sum(dim=(-1, -2))  # (B, T)
        for b, s in enumerate(scenes):
            if len(s.objects) > k:
                o = s.objects[k]
                if maps is not None:
                    maps[b, SHAPES.index(o.shape)] += visible[b]
                o.visibility = (seen[b] / shape_area(o.shape, o.radius)).clamp(0, 1).numpy().astype(np.float64)
                # "passes behind" means the wall, not another object, takes it from seen to hidden.
                o.passes_behind_wall = bool(
                    s.has_wall and T > 1 and o.visibility.min() < 0.5 and o.visibility.max() > 0.9
                )
        if k > 0:
            in_front.mul_(1 - alphas[k])
    video = video.mul_(2).sub_(1)
    return (video, maps) if shape_maps else video


# --- alt-text ---------------------------------------------------------------------------

_GENERIC_NOUNS = ("thing", "shape", "object", "blob")
_FILLERS = ("stock footage", "video", "animation", "hd clip", "loop", "free download")


def alt_text(scene: Scene, rng: np.random.Generator, config: AltTextConfig = AltTextConfig()) -> str:
    """A short web-style caption of the scene: it names one object, loosely, and may lie."""
    obj = scene.objects[0]
    colour, shape = obj.colour, obj.shape
    if rng.random() < config.p_wrong_colour:
        colour = str(rng.choice([c for c in COLOURS if c != obj.colour]))
    if rng.random() < config.p_wrong_shape:
        shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    noun = str(rng.choice(_GENERIC_NOUNS)) if rng.random() < config.p_generic_noun else shape
    words = [noun] if rng.random() < config.p_drop_colour else [colour, noun]
    if scene.frames > 1 and rng.random() < config.p_mention_motion and obj.motion != "still":
        words.append("moving" if obj.motion == "bounce" else obj.motion)
    if rng.random() < config.p_filler:
        words.append(str(rng.choice(_FILLERS)))
    return " ".join(words)


# --- the dataset ------------------------------------------------------------------------


@dataclass
class WorldSample:
    """One rendered sample: ``video (C, T, H, W)`` in [-1, 1], captions and the scene (truth)."""

    video: torch.Tensor
    caption: str
    alt_text: str
    scene: Scene
    index: int
    shape_map: torch.Tensor | None = None  # (len(SHAPES), T, H, W) coverage, when the world renders it


class ShapesWorld(Dataset):
    """A seeded, endless-but-indexed dataset of Shapes-world videos.

    Sample ``i`` depends only on ``(seed, i)`` and the config, never on the order of
    access, so the same index gives the same video on every machine and in every worker.

    ``__getitem__`` returns a dict that the default collate can batch: ``video``,
    ``caption``, ``alt_text``, ``index`` and integer ``labels`` of the first object
    (indices into this world's config vocabularies) and ``n_objects``.
    ``sample(i)`` returns the full :class:`WorldSample` with per-frame truth, and
    ``samples(indices)`` renders many at once (much faster than one by one).
    ``shape_maps=True`` adds each sample's per-pixel shape coverage (``shape_map``, see
    :func:`render`), the labels a shape-aware autoencoder trains with.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        frames: int = 16,
        height: int = 64,
        width: int = 64,
        seed: int = 0,
        config: WorldConfig | None = None,
        shape_maps: bool = False,
        **fixed,
    ) -> None:
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        check_video_size(frames, height, width)
        self.size, self.frames, self.height, self.width, self.seed = int(num_samples), frames, height, width, seed
        self.config = config or WorldConfig()
        self.shape_maps = shape_maps
        self.fixed = fixed
        # Fail now, not in a worker, if the fixed attributes are bad.
        sample_scene(np.random.default_rng(0), self.config, frames, height, width, **fixed)

    def __len__(self) -> int:
        return self.size

    def _draw(self, rng: np.random.Generator) -> Scene:
        return sample_scene(rng, self.config, self.frames, self.height, self.width, **self.fixed)

    def scene(self, i: int) -> tuple[Scene, np.random.Generator]:
        _, rng = sample_rng(self.seed, i, self.size)
        return self._draw(rng), rng

    def samples(self, indices: Sequence[int]) -> list[WorldSample]:
        seeded = [sample_rng(self.seed, int(i), self.size) for i in indices]
        indices = [i for i, _ in seeded]
        drawn = [(self._draw(rng), rng) for _, rng in seeded]
        # Small chunks keep the working set in cache: ~2x faster than one big batch.
        chunks = [render([s for s, _ in drawn[j:j + 8]], self.shape_maps) for j in range(0, len(drawn), 8)]
        if self.shape_maps:
            videos, maps = (torch.cat(parts) for parts in zip(*chunks))
        else:
            videos, maps = torch.cat(chunks), [None] * len(drawn)
        return [
            WorldSample(videos[j], scene.caption(), alt_text(scene, rng, self.config.alt_text), scene, int(i), maps[j])
            for j, ((scene, rng), i) in enumerate(zip(drawn, indices))
        ]

    def sample(self, i: int) -> WorldSample:
        return self.samples([i])[0]

    def labels(self, scene: Scene) -> dict[str, int]:
        obj, cfg = scene.objects[0], self.config
        return {
            "shape": cfg.shapes.index(obj.shape) if obj.shape in cfg.shapes else -1,
            "colour": cfg.colours.index(obj.colour) if obj.colour in cfg.colours else -1,
            "size": cfg.sizes.index(obj.size) if obj.size in cfg.sizes else -1,
            "motion": cfg.motions.index(obj.motion) if obj.motion in cfg.motions else -1,
            "background": cfg.backgrounds.index(scene.background) if scene.background in cfg.backgrounds else -1,
            "n_objects": len(scene.objects),
        }

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        item = {"video": s.video, "caption": s.caption, "alt_text": s.alt_text, "index": s.index,
                "labels": self.labels(s.scene)}
        if s.shape_map is not None:
            item["shape_map"] = s.shape_map
        return item


def render_prompt(frames: int = 16, height: int = 64, width: int = 64, seed: int = 0,
                  config: WorldConfig | None = None, **attributes) -> WorldSample:
    """Render one video whose first object has the given attributes (the ground truth of a prompt)."""
    world = ShapesWorld(1, frames, height, width, seed, config, **attributes)
    return world.sample(0)


def parse_caption(caption: str) -> dict:
    """Read a detailed caption back into attributes: the inverse of :meth:`Scene.caption`.

    Returns ``{"objects": [{shape, colour, size, motion, behind_wall}], "background",
    "pan", "wall"}`` (``motion`` is None for a still image); other text raises ``ValueError``.
    """
    sizes, colours, shapes = "|".join(SIZES), "|".join(COLOURS), "|".join(SHAPES)
    motions = "|".join(MOTION_PHRASES.values())
    obj = rf"a (?:{sizes}) (?:{colours}) (?:{shapes})(?: (?:{motions}))?(?: and passes behind a wall)?"
    m = re.fullmatch(
        rf"({obj}) (?:across|on) an? ({'|'.join(BACKGROUNDS)}) background"
        rf"(?: (?:while|with) ((?:{obj})(?:(?:, | and ){obj})*))?"
        rf"(, with a wall in the scene)?(?:, as the camera pans ({'|'.join(PANS)}))?",
        caption,
    )
    if m is None:
        raise ValueError(f"not a Shapes-world caption: {caption!r}")
    one = re.compile(rf"a ({sizes}) ({colours}) ({shapes})(?: ({motions}))?( and passes behind a wall)?")
    by_phrase = {v: k for k, v in MOTION_PHRASES.items()}
    phrases = [m.group(1)] + (re.findall(obj, m.group(3)) if m.group(3) else [])
    objects = []
    for phrase in phrases:
        om = one.fullmatch(phrase)
        objects.append({"size": om.group(1), "colour": om.group(2), "shape": om.group(3),
                        "motion": by_phrase.get(om.group(4)), "behind_wall": om.group(5) is not None})
    wall = m.group(4) is not None or any(o["behind_wall"] for o in objects)
    return {"objects": objects, "background": m.group(2), "pan": m.group(5), "wall": wall}


__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "SIZES", "MOTIONS", "PANS", "AltTextConfig", "WorldConfig",
    "WorldObject", "Scene", "WorldSample", "ShapesWorld", "sample_scene", "render", "alt_text",
    "render_prompt", "parse_caption", "shape_area", "half_extents", "check_video_size", "bounce_path", "sample_rng",
]
