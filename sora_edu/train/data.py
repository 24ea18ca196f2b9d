"""LightningDataModules over the toy worlds, for classification tasks.

Each task renders its samples once, in ``setup`` (seeded, so every run and every DDP rank
sees the same data), and keeps videos as uint8 to save memory; batches come back as
``{"x": float in [-1, 1], "y": long}``:

* ``digits``: scikit-learn's 8x8 digits as images ``x: (B, 1, H, W)`` (train: images
  0-1499, val: the other 297), with random rotations, scalings and shifts (up to ``shift`` pixels) in training;
* ``motion``: a Shapes-world video ``x: (B, 3, T, H, W)`` of one object; ``y`` is its motion
  (left, right, up, down, still, bounce), random shape, colour, size and background;
* ``shape``: a Shapes-world still image ``x: (B, 3, H, W)`` of one object; ``y`` its shape.

``MixedSizeDataModule`` serves NaViT: items of several ``(T, H, W)`` in one batch, as a list.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..data.digits import TRAIN_IMAGES, load_digits
from ..data.worlds import MOTIONS, SHAPES, ShapesWorld, WorldConfig

TASKS = ("digits", "motion", "shape")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def render_task(task: str, n: int, seed: int, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` labelled one-object Shapes-world videos: ``x (N, 3, T, H, W) uint8``,
    ``y (N,)`` the object's motion (``task="motion"``) or shape (``task="shape"``)."""
    if task not in ("motion", "shape"):
        raise ValueError(f"render_task renders the 'motion' or 'shape' task, got {task!r}")
    config = WorldConfig(min_objects=1, max_objects=1, p_occluder=0.0, p_pan=0.0)
    world = ShapesWorld(n, frames, height, width, seed=seed, config=config)
    xs, ys = [], []
    for start in range(0, n, 256):
        for s in world.samples(range(start, min(n, start + 256))):
            xs.append(to_uint8(s.video))
            obj = s.scene.objects[0]
            ys.append(MOTIONS.index(obj.motion) if task == "motion" else SHAPES.index(obj.shape))
    return torch.stack(xs), torch.tensor(ys)


class ClassifyDataModule(pl.LightningDataModule):
    """Toy classification data; see the module docstring for the tasks and layouts."""

    def __init__(self, task: str = "motion", num_train: int = 4000, num_val: int = 500, frames: int = 8,
                 height: int = 32, width: int = 32, batch_size: int = 64, shift: int = 1, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.save_hyperparameters()
        self.task = task

    @property
    def num_classes(self) -> int:
        return {"digits": 10, "motion": len(MOTIONS), "shape": len(SHAPES)}[self.task]

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        hp = self.hparams
        if self.task == "digits":
            images, labels = load_digits()
            x = images[:, None] * 2 - 1  # (N, 1, 8, 8) in [-1, 1]
            if (hp.height, hp.width) != (8, 8):
                x = F.interpolate(x, size=(hp.height, hp.width), mode="bilinear", align_corners=False)
            x = to_uint8(x)
            train = (x[:TRAIN_IMAGES][: hp.num_train], labels[:TRAIN_IMAGES][: hp.num_train])
            val = (x[TRAIN_IMAGES:][: hp.num_val], labels[TRAIN_IMAGES:][: hp.num_val])
        else:
            # Different seeds: validation videos are never training videos. The shape task
            # classifies still images (B, 3, H, W).
            frames = hp.frames if self.task == "motion" else 1
            train = render_task(self.task, hp.num_train, hp.seed, frames, hp.height, hp.width)
            val = render_task(self.task, hp.num_val, hp.seed + 10_000, frames, hp.height, hp.width)
            if self.task == "shape":
                train, val = (train[0][:, :, 0], train[1]), (val[0][:, :, 0], val[1])
        self.train_set, self.val_set = TensorDataset(*train), TensorDataset(*val)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          generator=g, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, num_workers=self.hparams.num_workers)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        x = from_uint8(x)
        if self.trainer is not None and self.trainer.training and self.hparams.shift > 0 and self.task == "digits":
            x = random_affine(x, self.hparams.shift)
        return {"x": x, "y": y}


def random_affine(x: torch.Tensor, shift: float, degrees: float = 12.0, scale: float = 0.1) -> torch.Tensor:
    """Randomly rotate (up to ``degrees``), scale (by up to ``scale``) and translate (up to
    ``shift`` pixels) each image of ``x: (B, C, H, W)``: cheap, batched augmentation that
    keeps a small ViT on 1,500 digits from memorising them."""
    b, _, h, w = x.shape
    angle = (torch.rand(b) * 2 - 1) * degrees * torch.pi / 180
    s = 1 + (torch.rand(b) * 2 - 1) * scale
    t = (torch.rand(b, 2) * 2 - 1) * shift * 2 / torch.tensor([w, h])  # pixels -> [-1, 1] units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos() / s, -angle.sin() / s
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin() / s, angle.cos() / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MixedSizeDataset(torch.utils.data.Dataset):
    """Labelled Shapes-world items of several ``(T, H, W)`` sizes (item ``i`` has size
    ``sizes[i % len(sizes)]``); items stay uint8 ``(C, T, H, W)`` until the batch is moved."""

    def __init__(self, task: str, n: int, sizes: list[tuple[int, int, int]], seed: int) -> None:
        if task not in ("shape", "motion"):
            raise ValueError(f"mixed sizes support the 'shape' and 'motion' tasks, got {task!r}")
        self.sizes = [tuple(s) for s in sizes]
        self.items: list[torch.Tensor | None] = [None] * n
        self.labels = torch.empty(n, dtype=torch.long)
        for k, (t, h, w) in enumerate(self.sizes):
            idx = list(range(k, n, len(self.sizes)))
            if not idx:
                continue
            x, y = render_task(task, len(idx), seed + 1000 * k, t, h, w)
            for j, i in enumerate(idx):
                self.items[i], self.labels[i] = x[j], y[j]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.items[i], self.labels[i]


def collate_list(batch):
    """Keep items of different sizes as a list; stack the labels."""
    return [x for x, _ in batch], torch.stack([y for _, y in batch])


class MixedSizeDataModule(pl.LightningDataModule):
    """Shapes-world items at mixed resolutions, aspect ratios and durations for NaViT
    (notebook 03). Batches are ``{"x": list of (C, T, H, W) float, "y": (B,) long}``."""

    def __init__(self, task: str = "shape", sizes: list[tuple[int, int, int]] = ((1, 32, 32), (1, 16, 48), (1, 48, 16), (4, 24, 24)),
                 val_sizes: list[tuple[int, int, int]] | None = None, num_train: int = 3000, num_val: int = 600,
                 batch_size: int = 64, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = task

    @property
    def num_classes(self) -> int:
        return len(SHAPES) if self.task == "shape" else len(MOTIONS)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        hp = self.hparams
        self.train_set = MixedSizeDataset(self.task, hp.num_train, list(hp.sizes), hp.seed)
        self.val_set = MixedSizeDataset(self.task, hp.num_val, list(hp.val_sizes or hp.sizes), hp.seed + 10_000)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          generator=g, collate_fn=collate_list, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=128, collate_fn=collate_list, num_workers=self.hparams.num_workers)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        xs, y = batch
        return {"x": [from_uint8(x) for x in xs], "y": y}


class WorldVideoDataModule(pl.LightningDataModule):
    """Unlabelled Shapes-world videos for the autoencoder: ``{"x": (B, 3, T, H, W)}`` in [-1, 1].

    Rendered on the fly (the world renders ~600 videos/s at 16x64x64), so training never
    sees the same video twice; validation is a fixed seeded set.

    ``train_crop = (t, h, w)`` trains on random spacetime crops of the rendered videos
    (validation stays whole). A convolutional autoencoder does not care about the size
    it sees, and a 9x32x32 crop costs 1/7 of a 17x64x64 clip, so the same minutes buy
    7x the gradient steps.

    ``shape_maps=True`` adds ``"shape_map": (B, len(SHAPES), T, H, W)``, each shape's
    per-pixel coverage (cropped with the video), for a shape-aware autoencoder
    (:class:`~sora_edu.train.autoencode.AutoencoderModule`'s ``semantic_weight``).
    """

    def __init__(self, num_train: int = 100_000, num_val: int = 64, frames: int = 17, height: int = 64,
                 width: int = 64, batch_size: int = 16, max_objects: int = 3, p_occluder: float = 0.2,
                 p_pan: float = 0.2, seed: int = 0, num_workers: int = 0,
                 train_crop: tuple[int, int, int] | None = None, shape_maps: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_crop is not None:
            if len(train_crop) != 3 or any(c < 1 or c > s for c, s in zip(train_crop, (frames, height, width))):
                raise ValueError(f"train_crop must be (t, h, w) within ({frames}, {height}, {width}), got {train_crop}")
        self._crop_rng = torch.Generator().manual_seed(seed + 1)

    def _world(self, n: int, seed: int) -> ShapesWorld:
        hp = self.hparams
        config = WorldConfig(max_objects=hp.max_objects, p_occluder=hp.p_occluder, p_pan=hp.p_pan)
        return ShapesWorld(n, hp.frames, hp.height, hp.width, seed=seed, config=config, shape_maps=hp.shape_maps)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._world(self.hparams.num_train, self.hparams.seed)
        self.val_set = self._world(self.hparams.num_val, self.hparams.seed + 10_000)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          generator=g, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        out = {"x": batch["video"]}
        if "shape_map" in batch:
            out["shape_map"] = batch["shape_map"]
        crop = self.hparams.train_crop
        if crop is not None and self.trainer is not None and self.trainer.training:
            # One random spacetime window per batch, the same for the video and its shape map.
            starts = [int(torch.randint(0, s - c + 1, (), generator=self._crop_rng))
                      for c, s in zip(crop, out["x"].shape[2:])]
            (t0, h0, w0), (t, h, w) = starts, crop
            out = {k: v[:, :, t0:t0 + t, h0:h0 + h, w0:w0 + w] for k, v in out.items()}
        return out
