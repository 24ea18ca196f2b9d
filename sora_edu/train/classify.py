"""A LightningModule that trains any classifier network (ViT, ViViT, NaViT, ...).

The network is an argument, so a YAML config picks it by ``class_path`` and the same
module trains every model of notebooks 01-03. AdamW with linear warm-up then cosine
decay over the run's steps; cross-entropy; logs ``train/loss``, ``val/loss``, ``val/acc``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .optim import warmup_cosine


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, num_classes: int = 10, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 100, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"])
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["x"])
        self.log("val/loss", F.cross_entropy(logits, batch["y"]), prog_bar=True)
        self.val_acc(logits, batch["y"])
        self.log("val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        # No weight decay on norms and biases (standard for transformers).
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}

    @torch.no_grad()
    def accuracy(self, loader) -> float:
        """Accuracy over a dataloader of ``{"x", "y"}`` or ``(x, y)`` batches (eval mode)."""
        was_training = self.training
        self.eval()
        right = total = 0
        for batch in loader:
            x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
            right += (self(x).argmax(-1) == y).sum().item()
            total += len(y)
        self.train(was_training)
        return right / total
