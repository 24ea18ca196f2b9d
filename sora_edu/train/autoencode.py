"""A LightningModule that trains the video autoencoder (notebook 04, ``vae_*.yaml``).

Loss: ``l1 * |x - x_hat| + l2 * (x - x_hat)^2 + the bottleneck's term`` (beta * KL, or the
VQ commitment loss). Validation reports PSNR and SSIM (torchmetrics, frames as images)
and, for quantisers, the fraction of the codebook in use. After fitting, the latent
*scale factor* (1 / std of the latents over the validation set, as latent diffusion
computes it) is stored in the autoencoder's ``scale_factor`` buffer, so it travels with
the weights.

``semantic_weight > 0`` makes the latent *shape-aware* (the idea of VA-VAE, Yao et al.,
"Reconstruction vs. Generation", arXiv 2501.01423, which aligns a tokenizer's latents to a
vision foundation model; here the world's ground truth stands in for that model): each
latent cell must name, by a fixed-length direction of the standardised latent, which shape
covers it (or the background), against the mean of the data's ``shape_map`` over the
cell's pixels (soft cross-entropy, the cells an object touches and the background-only
cells averaged apart and added, weighted by ``semantic_weight``). Because the direction
has unit norm and the temperature is fixed, the shape must take up a real share of the
latent's variance: the hope is that a small cross and a small circle, which a plain
autoencoder tells apart by a few small numbers, end up far apart, where a denoiser's error
cannot turn one into the other. Validation reports ``val/semantic_acc``: the fraction of
object-dominated cells whose shape the direction reads right. Measured on ``vae_t2v``
(README, session 19) it did the opposite: at weight 0.05 the autoencoder gave back 31 % of
small crosses (85 % without it), at 0.005 69 % of moving ones (94 % without), so no config
uses it.

``object_weight > 0`` weighs the reconstruction error on the pixels an object covers, and on
a 2-pixel band around them, ``1 + object_weight`` times (shape maps in the batch, as above):
a small object's outline is a few pixels of the frame, and a plain mean spends the latent on
the background. Measured on ``vae_t2v`` (README, session 21) at 3: the same PSNR, and moving
small crosses no better kept under latent noise (100 / 56 / 41 % at 0.1 / 0.2 / 0.3 against
88 / 59 / 44 %), so no config uses it either.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ..data.worlds import SHAPES
from ..models.vae import VideoAutoencoder
from .optim import warmup_cosine
from .segmentation import balanced_soft_ce, cell_classes


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
                 l1_weight: float = 1.0, l2_weight: float = 0.0, semantic_weight: float = 0.0,
                 semantic_temperature: float = 4.0, object_weight: float = 0.0) -> None:
        super().__init__()
        if object_weight < 0:
            raise ValueError(f"object_weight must be >= 0, got {object_weight}")
        if semantic_weight < 0 or semantic_temperature <= 0:
            raise ValueError(f"semantic_weight must be >= 0 and semantic_temperature > 0, "
                             f"got {semantic_weight} and {semantic_temperature}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        if semantic_weight > 0:
            # one direction per class (background first, then SHAPES); normalised in use
            self.semantic_directions = torch.nn.Parameter(torch.randn(len(SHAPES) + 1, net.z_channels))
            self.semantic_bias = torch.nn.Parameter(torch.zeros(len(SHAPES) + 1))
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

    def semantic_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, z, T', H', W')`` -> class logits ``(B, 1 + len(SHAPES), T', H', W')``:
        the temperature times the standardised latent's projection on each class's unit direction."""
        z = latents / latents.detach().std().clamp_min(1e-6)
        directions = F.normalize(self.semantic_directions, dim=1)
        logits = torch.einsum("kc,bcthw->bkthw", directions, z) * self.hparams.semantic_temperature
        return logits + self.semantic_bias[:, None, None, None]

    def semantic_targets(self, shape_map: torch.Tensor) -> torch.Tensor:
        """``shape_map (B, len(SHAPES), T, H, W)`` -> each latent cell's class fractions
        ``(B, 1 + len(SHAPES), T', H', W')``, background first."""
        return cell_classes(self.net.pool_to_latent(shape_map))

    def _loss(self, batch: dict):
        x, hp = batch["x"], self.hparams
        needs_maps = [name for name in ("object_weight", "semantic_weight") if hp[name] > 0]
        if needs_maps and "shape_map" not in batch:
            raise ValueError(f"{' and '.join(needs_maps)} need{'s' if len(needs_maps) == 1 else ''} per-pixel shape "
                             "maps in the batch: set data.init_args.shape_maps: true (WorldVideoDataModule)")
        out = self.net(x)
        err = out.reconstruction - x
        abs_err, sq_err = err.abs(), err.pow(2)
        if hp.object_weight > 0:
            # the pixels an object covers, and a 2-pixel band around it, weigh 1 + object_weight:
            # a small object's outline is a few pixels of the frame, and a plain mean spends the
            # latent on the background. The band keeps the weight symmetric across the outline
            # (the object alone, weighted 11x, came back swollen and trailing ghosts).
            cover = batch["shape_map"].sum(1, keepdim=True).clamp(max=1.0)
            near = F.max_pool3d(cover, (1, 5, 5), stride=1, padding=(0, 2, 2))
            weight = 1.0 + hp.object_weight * near
            abs_err, sq_err = weight * abs_err, weight * sq_err
        rec = hp.l1_weight * abs_err.mean() + hp.l2_weight * sq_err.mean()
        if hp.semantic_weight > 0:
            logits, target = self.semantic_logits(out.latents), self.semantic_targets(batch["shape_map"])
            out.stats["semantic"] = balanced_soft_ce(logits, target)
            objects = target[:, 1:].max(1).values >= 0.5  # cells mostly covered by one shape
            right = logits[:, 1:].argmax(1) == target[:, 1:].argmax(1)
            out.stats["semantic_acc"] = (right[objects].float().mean() if objects.any() else torch.tensor(float("nan"))).detach()
            rec = rec + hp.semantic_weight * out.stats["semantic"]
        return rec + out.loss, out

    def training_step(self, batch, batch_idx):
        loss, out = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        with torch.no_grad():
            mse = (out.reconstruction - batch["x"]).pow(2).mean()
        self.log("train/psnr", 10 * torch.log10(4.0 / mse), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["x"]
        loss, out = self._loss(batch)
        rec = out.reconstruction.clamp(-1, 1)
        self.log("val/loss", loss)
        if "semantic_acc" in out.stats:
            self.log("val/semantic_acc", out.stats["semantic_acc"])
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
