"""A LightningModule that trains the tiny video-text CLIP (notebook 07, ``clip_t2v.yaml``).

Data: the text-to-video data module's batches ``{"x": latents, "ids", "mask"}`` (the
same encoded Shapes-world videos and detailed captions the DiT trains on). Pairs in a
batch with identical captions are all true pairs (:func:`contrastive_loss`'s ``same``).
Validation logs top-1 retrieval both ways over the whole validation set.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ..models.clip import TinyCLIP, contrastive_loss, retrieval_accuracy
from .optim import warmup_cosine


class ContrastiveModule(pl.LightningModule):
    def __init__(self, net: TinyCLIP, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 50) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def same_caption(ids: torch.Tensor) -> torch.Tensor:
        """``(B, B)`` bool: rows ``i, j`` carry the same token sequence."""
        return (ids[:, None, :] == ids[None, :, :]).all(-1)

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["x"], batch["ids"], batch["mask"])
        loss = contrastive_loss(logits, self.same_caption(batch["ids"]))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/temperature", 1 / self.net.logit_scale.exp())
        return loss

    def validation_step(self, batch, batch_idx):
        self._val.append((self.net.encode_video(batch["x"]), self.net.encode_text(batch["ids"], batch["mask"]),
                          batch["ids"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        video, text, ids = (torch.cat(parts) for parts in zip(*self._val))
        self._val.clear()
        captions = [tuple(row) for row in ids.tolist()]
        for k, v in retrieval_accuracy(video, text, captions).items():
            self.log(f"val/{k}", v, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}
