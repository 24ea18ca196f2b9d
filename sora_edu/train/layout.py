"""The layout stage of two-stage text-to-video (``layout_t2v.yaml``): caption -> boxes.

:class:`LayoutModule` trains a :class:`~sora_edu.models.layout.LayoutPlanner` by flow
matching on the world's ground truth, the object's box in every frame of the same
one-object clips the video model learns from (:class:`LayoutDataModule`: scenes are drawn,
never rendered, so thousands take a second). :meth:`LayoutModule.plan` samples boxes for
captions; :func:`layout_adherence` scores planned boxes against what the prompt asked
(motion read off the centre track as the world-truth scorer reads it, size, inside the
frame). A video model with ``layout_from: layout_t2v``
(:class:`~sora_edu.train.diffusion.DiffusionModule`) plans with it before drawing.

Batches: ``{"x": boxes (B, 4, T) in [-1, 1], "ids", "mask": (B, L)}``; boxes in pixels are
``(B, T, 4)`` (:mod:`sora_edu.models.layout`).
"""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..diffusion import Diffusion, sample
from ..models.layout import LayoutPlanner
from .optim import warmup_cosine


def normalise_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel boxes ``(B, T, 4)`` -> the planner's ``(B, 4, T)`` in [-1, 1] (the frame's edges)."""
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes / scale * 2 - 1).transpose(1, 2)


def pixel_boxes(x: torch.Tensor, height: int, width: int, least: float = 1.0) -> torch.Tensor:
    """The inverse of :func:`normalise_boxes`; corners put in order and boxes at least
    ``least`` pixels wide, so that every sampled box is a box."""
    scale = x.new_tensor([width, height, width, height])
    b = (x.transpose(1, 2) + 1) / 2 * scale
    lo, hi = torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])
    centre, half = (lo + hi) / 2, ((hi - lo) / 2).clamp_min(least / 2)
    return torch.cat([centre - half, centre + half], -1)


def inside_frame(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes ``(B, T, 4)`` px shifted (not resized) to lie inside the frame where they fit:
    the world never puts an object past the frame's edge, and a sampled plan overshoots it by
    a pixel or two (``layout_adherence``'s ``inside`` counts that before this shift)."""
    low = (-boxes[..., :2]).clamp_min(0)  # past the left / top edge
    high = (boxes[..., 2:] - boxes.new_tensor([width, height])).clamp_min(0)  # past the right / bottom
    shift = torch.where(low > 0, low, -high)
    return boxes + shift.repeat(1, 1, 2)


def layout_adherence(boxes: torch.Tensor, wanted: Sequence[dict], height: int, width: int) -> dict:
    """Planned ``boxes (B, T, 4)`` px against the attributes each prompt asked for: ``motion``
    (the centre track read as :mod:`~sora_edu.eval.world_score` reads an object's), ``size``
    (the box nearer the asked shape's box at that size than at the other), ``inside`` (every
    box within the frame, 1 px of slack) and ``all``, as fractions."""
    from ..data.worlds import SIZES, half_extents
    from ..eval.world_score import read_motion
    from .text_video import T2V_WORLD

    side = min(height, width)
    rows = []
    for box, want in zip(boxes.tolist(), wanted):
        b = torch.tensor(box)
        centre, extent = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]).mean(0)
        row = {}
        if "motion" in want:
            track = [(y, x) for x, y in centre.tolist()]  # the scorer's tracks are (row, column)
            row["motion"] = read_motion(track, side, T2V_WORLD.motions) == want["motion"]
        if "size" in want:
            def gap(size):
                left, top, right, bottom = half_extents(want["shape"], SIZES[size] * side)
                return float((extent - torch.tensor([left + right, top + bottom])).abs().sum())
            row["size"] = min(T2V_WORLD.sizes, key=gap) == want["size"]
        row["inside"] = bool((b[:, :2] >= -1).all() and (b[:, 2] <= width + 1).all() and (b[:, 3] <= height + 1).all())
        row["all"] = all(row.values())
        rows.append(row)
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


class LayoutModule(pl.LightningModule):
    """Flow matching (rectified flow, velocity target) on box trajectories given a caption.

    Args:
        net: the planner, ``net(x (B, 4, T), t, {"ids", "mask"})``.
        height, width: the frame the boxes live in (pixels).
        cond_drop: fraction of captions replaced by the empty one (classifier-free guidance).
        steps: Euler steps of :meth:`plan` (and of validation's adherence).
    """

    def __init__(self, net: LayoutPlanner, height: int = 64, width: int = 64, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 100, cond_drop: float = 0.1, steps: int = 20) -> None:
        super().__init__()
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        from ..models.text import WordTokenizer

        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.diffusion = Diffusion("flow")
        self.tokenizer = WordTokenizer.for_world()
        if net.text.embed.num_embeddings != len(self.tokenizer):
            raise ValueError(f"the planner's text vocabulary has {net.text.embed.num_embeddings} words but the "
                             f"world's tokenizer has {len(self.tokenizer)}: set vocab_size={len(self.tokenizer)}")
        self._val: list[dict] = []

    def _null(self, n: int, max_len: int) -> dict:
        ids, mask = self.tokenizer.encode([""] * n, max_len=max_len)
        return {"ids": ids.to(self.device), "mask": mask.to(self.device)}

    def training_step(self, batch, batch_idx):
        ids, mask = batch["ids"], batch["mask"]
        if self.hparams.cond_drop:
            keep = torch.rand(len(ids), device=ids.device) >= self.hparams.cond_drop
            null = self._null(len(ids), ids.shape[1])
            ids, mask = torch.where(keep[:, None], ids, null["ids"]), torch.where(keep[:, None], mask, null["mask"])
        loss = self.diffusion.loss(self.net, batch["x"], {"ids": ids, "mask": mask})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        hp = self.hparams
        boxes = self.plan({"ids": batch["ids"], "mask": batch["mask"]}, seed=batch_idx, raw=True)
        from .text_video import asked_in

        self._val.append({"n": len(boxes), **layout_adherence(boxes.cpu(), asked_in(self.tokenizer.decode(batch["ids"])),
                                                              hp.height, hp.width)})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        n = sum(r["n"] for r in self._val)
        for key in self._val[0]:
            if key != "n":
                self.log(f"val/{key}", sum(r[key] * r["n"] for r in self._val) / n, prog_bar=key == "all")
        self._val.clear()

    @torch.no_grad()
    def plan(self, cond, seed: int = 0, guidance: float = 1.0, steps: int | None = None, raw: bool = False) -> torch.Tensor:
        """Boxes ``(B, T, 4)`` in pixels for ``cond``: prompts (a list of strings) or a text
        condition ``{"ids", "mask"}``, shifted inside the frame (:func:`inside_frame`; not
        with ``raw``).
        Seeded: the same prompt and seed, the same path."""
        if isinstance(cond, (list, tuple)):
            ids, mask = self.tokenizer.encode(list(cond), max_len=24)
            cond = {"ids": ids, "mask": mask}
        cond = {"ids": cond["ids"].to(self.device), "mask": cond["mask"].to(self.device)}
        was_training = self.training
        self.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        n = len(cond["ids"])
        x = sample(self.diffusion, self.net, (n, 4, self.net.frames), cond, sampler="euler",
                   steps=steps or self.hparams.steps, guidance=guidance, clip=None,
                   null_cond=self._null(n, cond["ids"].shape[1]) if guidance != 1.0 else None,
                   generator=g, device=self.device)
        self.train(was_training)
        boxes = pixel_boxes(x.float(), self.hparams.height, self.hparams.width)
        return boxes if raw else inside_frame(boxes, self.hparams.height, self.hparams.width)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}


class LayoutDataModule(pl.LightningDataModule):
    """The text-to-video world's captions and their boxes (:data:`~sora_edu.train.text_video.T2V_WORLD`,
    held-out combinations left out, the same scenes in the same order as
    :class:`~sora_edu.train.text_video.TextVideoDataModule`'s clips), drawn not rendered."""

    def __init__(self, num_train: int = 8000, num_val: int = 256, frames: int = 16, height: int = 64, width: int = 64,
                 batch_size: int = 256, max_len: int = 24, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def _set(self, n: int, seed: int) -> TensorDataset:
        from ..models.text import WordTokenizer
        from .text_video import scene_boxes, training_scenes

        hp = self.hparams
        scenes = training_scenes(n, seed, hp.frames, hp.height, hp.width)
        boxes = scene_boxes(scenes)
        ids, mask = WordTokenizer.for_world().encode([s.caption() for s in scenes], max_len=hp.max_len)
        return TensorDataset(normalise_boxes(boxes, hp.height, hp.width).contiguous(), ids, mask)

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.train_set = self._set(self.hparams.num_train, self.hparams.seed)
            self.val_set = self._set(self.hparams.num_val, self.hparams.seed + 10_000)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, ids, mask = batch
        return {"x": x, "ids": ids, "mask": mask}


__all__ = ["LayoutDataModule", "LayoutModule", "inside_frame", "layout_adherence", "normalise_boxes", "pixel_boxes"]
