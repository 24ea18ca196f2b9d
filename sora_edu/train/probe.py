"""A LightningModule that trains the noise-aware shape probe (``probe_t2v.yaml``).

Data: the text-to-video data module's batches ``{"x": latents, "ids", "mask"}``; the
(shape, size) labels come from the captions (:func:`~sora_edu.models.probe.shape_size_labels`).
Each training latent is noised to a flow time ``t ~ U(0, t_max)``. Validation logs the
accuracy at fixed times (``val/acc_t0.0``, ``val/acc_t0.5``, ...), the same noise every
epoch, so the figures compare across runs.
"""

from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from ..diffusion import Diffusion
from ..models.probe import ShapeProbe, shape_size_labels
from .optim import warmup_cosine

_FLOW = Diffusion("flow")  # only its forward process is used: x_t = (1 - t) x0 + t eps


class ProbeModule(pl.LightningModule):
    def __init__(self, net: ShapeProbe, lr: float = 2e-3, weight_decay: float = 0.0, warmup_steps: int = 50,
                 t_max: float = 1.0, val_times: Sequence[float] = (0.0, 0.3, 0.5, 0.7)) -> None:
        super().__init__()
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {t_max}")
        from ..models.text import WordTokenizer
        from .text_video import T2V_WORLD

        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.tokenizer = WordTokenizer.for_world()
        self.shapes, self.sizes = T2V_WORLD.shapes, T2V_WORLD.sizes
        if net.classes != len(self.shapes) * len(self.sizes):
            raise ValueError(f"the probe has {net.classes} classes but the world has {len(self.shapes)} shapes x "
                             f"{len(self.sizes)} sizes: set classes={len(self.shapes) * len(self.sizes)}")
        self._val: dict[float, list[torch.Tensor]] = {}

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        return shape_size_labels(ids, self.tokenizer, self.shapes, self.sizes)

    @staticmethod
    def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The flow path the diffusion models train on, ``(1 - t) x0 + t noise``: their own
        :meth:`Diffusion.q_sample`, so the probe sees the states the U-Net sees."""
        return _FLOW.q_sample(x0, t, noise)

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        t = torch.rand(len(x), device=x.device) * self.hparams.t_max
        logits = self.net(self.noised(x, t, torch.randn_like(x)), t)
        loss = F.cross_entropy(logits.float(), self.labels(batch["ids"]))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch["x"], self.labels(batch["ids"])
        g = torch.Generator().manual_seed(batch_idx)  # the same noise every epoch
        noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        for t in self.hparams.val_times:
            tt = torch.full((len(x),), float(t), device=x.device)
            self._val.setdefault(float(t), []).append(self.net(self.noised(x, tt, noise), tt).argmax(-1) == y)

    def on_validation_epoch_end(self) -> None:
        for t, right in self._val.items():
            self.log(f"val/acc_t{t:.1f}", torch.cat(right).float().mean(), prog_bar=t == 0.5)
        self._val.clear()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}
