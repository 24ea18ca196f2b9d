"""A LightningModule that trains the video autoencoder (notebook 04, ``vae_*.yaml``).

Loss: ``l1 * |x - x_hat| + l2 * (x - x_hat)^2 + the bottleneck's term`` (beta * KL, or the
VQ commitment loss). Validation reports PSNR and SSIM (torchmetrics, frames as images)
and, for quantisers, the fraction of the codebook in use. After fitting, the latent
*scale factor* (1 / std of the latents over the validation set, as latent diffusion
computes it) is stored in the autoencoder's ``scale_factor`` buffer, so it travels with
the weights.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ..models.vae import VideoAutoencoder
from .optim import warmup_cosine


def _frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B*T, C, H, W)``: metrics for images, applied to every frame."""
    return video.transpose(1, 2).flatten(0, 1)


@torch.no_grad()
def evaluate_reconstruction(net: VideoAutoencoder, videos: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``net``'s reconstructions of ``videos (N, C, T, H, W)`` in [-1, 1],
    over all frames together (PSNR from the mean squared error of the whole set)."""
    net.eval()
    recs = torch.cat([net(v).reconstruction.clamp(-1, 1) for v in videos.split(batch_size)])
    return {"psnr": float(peak_signal_noise_ratio(_frames(recs), _frames(videos), data_range=2.0)),
            "ssim": float(structural_similarity_index_measure(_frames(recs), _frames(videos), data_range=2.0))}


class AutoencoderModule(pl.LightningModule):
    def __init__(self, net: VideoAutoencoder, lr: float = 2e-3, weight_decay: float = 0.0, warmup_steps: int = 50,
                 l1_weight: float = 1.0, l2_weight: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.psnr = PeakSignalNoiseRatio(data_range=2.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=2.0)

    def on_fit_start(self) -> None:
        # Standardise pixels with the statistics of a first training batch (a fresh run only:
        # a resumed or cached model keeps the statistics it was trained with).
        fresh = torch.all(self.net.pixel_std == 1) and torch.all(self.net.pixel_mean == 0)
        if self.trainer.global_step == 0 and fresh and self.trainer.datamodule is not None:
            loader = self.trainer.datamodule.train_dataloader()
            batch = self.trainer.datamodule.on_after_batch_transfer(next(iter(loader)), 0)
            self.net.set_pixel_stats(batch["x"].to(self.device))

    def _loss(self, x: torch.Tensor):
        out = self.net(x)
        err = out.reconstruction - x
        rec = self.hparams.l1_weight * err.abs().mean() + self.hparams.l2_weight * err.pow(2).mean()
        return rec + out.loss, out

    def training_step(self, batch, batch_idx):
        loss, out = self._loss(batch["x"])
        self.log("train/loss", loss, prog_bar=True)
        with torch.no_grad():
            mse = (out.reconstruction - batch["x"]).pow(2).mean()
        self.log("train/psnr", 10 * torch.log10(4.0 / mse), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["x"]
        loss, out = self._loss(x)
        rec = out.reconstruction.clamp(-1, 1)
        self.log("val/loss", loss)
        self.psnr(_frames(rec), _frames(x))
        self.ssim(_frames(rec), _frames(x))
        self.log("val/psnr", self.psnr, prog_bar=True)
        self.log("val/ssim", self.ssim)

    def on_validation_epoch_start(self) -> None:
        if hasattr(self.net, "quantizer"):
            self.net.quantizer.reset_usage()

    def on_validation_epoch_end(self) -> None:
        if hasattr(self.net, "quantizer") and not self.trainer.sanity_checking:
            self.log("val/codebook_usage", self.net.quantizer.usage())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}

    @torch.no_grad()
    def compute_scale_factor(self, loader) -> float:
        """Set ``net.scale_factor = 1 / std(latents)`` over a loader of videos (latent diffusion's rule)."""
        self.net.eval()
        latents = [self.net.encode(b["video"] if "video" in b else b["x"]) for b in loader]
        std = torch.cat([z.flatten() for z in latents]).std().item()
        self.net.scale_factor.fill_(1.0 / std)
        return 1.0 / std
