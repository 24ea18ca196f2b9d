"""A LightningModule for diffusion training, in pixel or latent space (notebook 05).

The network is any ``net(x, t, cond)`` (the U-Net here, the DiT later); the objective,
schedule and condition dropout come from the config. With ``vae`` set (a cached
autoencoder config, e.g. ``"vae_kl"``) the module works in that autoencoder's latent
space: it expects latents already scaled by the VAE's ``scale_factor`` (the
:class:`LatentVideoDataModule` makes them) and :meth:`generate` decodes its samples to
videos. Weight EMA comes from the :class:`~sora_edu.train.callbacks.EMA` callback.

Batches: ``{"x": (B, C, ...) data or scaled latents, "y": (B,) labels}``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from ..diffusion import Diffusion, sample
from ..viz import save_video, tile
from .data import from_uint8, render_task
from .optim import warmup_cosine


class DiffusionModule(pl.LightningModule):
    def __init__(self, net: nn.Module, objective: str = "eps", schedule: str = "cosine", timesteps: int = 1000,
                 num_classes: int | None = 10, cond_drop: float = 0.1, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 100, vae: str | None = None, vae_overrides: list[str] | None = None,
                 clip: float | None = 1.0) -> None:
        super().__init__()
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.diffusion = Diffusion(objective, schedule, timesteps)
        # The autoencoder is kept outside the module tree (not a submodule): the checkpoint
        # holds the denoiser only, and the optimiser and .train() never touch the VAE.
        self.__dict__["_vae"] = None

    # --- conditions ---------------------------------------------------------------------

    def null(self, batch: int) -> torch.Tensor | None:
        """The null condition: the extra label ``num_classes``."""
        n = self.hparams.num_classes
        return None if n is None else torch.full((batch,), n, dtype=torch.long, device=self.device)

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """Replace a ``cond_drop`` fraction of labels by the null label (for CFG)."""
        if self.hparams.num_classes is None or self.hparams.cond_drop == 0:
            return y
        keep = torch.rand(y.shape, device=y.device) >= self.hparams.cond_drop
        return torch.where(keep, y, self.null(len(y)))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            self.check_data(dm)
            if getattr(dm, "vae", None) is not None and self.hparams.vae is not None:
                # The same cached autoencoder the data were encoded with: no second load.
                self.__dict__["_vae"] = dm.vae.requires_grad_(False)

    def check_data(self, datamodule) -> None:
        """The data must be latents of the autoencoder this model decodes with."""
        hp = getattr(datamodule, "hparams", {})
        if "vae" not in hp:
            return
        data = (hp["vae"], list(hp.get("vae_overrides") or []))
        mine = (self.hparams.vae, list(self.hparams.vae_overrides or []))
        if data != mine:
            raise ValueError(f"the data were encoded by {data[0]!r} {data[1]} but the model decodes with "
                             f"{mine[0]!r} {mine[1]}: set model.init_args.vae (and vae_overrides) to match")

    # --- training -----------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        y = self.drop(batch["y"]) if self.hparams.num_classes else None
        loss = self.diffusion.loss(self.net, batch["x"], y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed times and noise, so the validation loss is comparable across steps.
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        y = batch["y"] if self.hparams.num_classes else None
        self.log("val/loss", self.diffusion.loss(self.net, batch["x"], y, generator=g), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}

    # --- sampling -----------------------------------------------------------------------

    @property
    def vae(self):
        if self.hparams.vae is None:
            return None
        if self._vae is None:
            from .cached import load_or_train_vae

            vae = load_or_train_vae(self.hparams.vae, *(self.hparams.vae_overrides or []), verbose=False).eval()
            self.__dict__["_vae"] = vae.requires_grad_(False).to(self.device)
        return self.__dict__["_vae"]

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...], labels: torch.Tensor | None = None, seed: int = 0, **kwargs) -> torch.Tensor:
        """Samples in the model's own space (pixels or scaled latents). ``kwargs`` go to
        :func:`sora_edu.diffusion.sample` (sampler, steps, eta, guidance, chain)."""
        was_training = self.training
        self.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        labels = labels.to(self.device) if labels is not None else None
        kwargs.setdefault("sampler", "euler" if self.diffusion.is_flow else "ddim")
        kwargs.setdefault("clip", self.hparams.clip)
        null = self.null(shape[0]) if labels is not None else None
        out = sample(self.diffusion, self.net, shape, labels, null_cond=null, generator=g, device=self.device, **kwargs)
        self.train(was_training)
        return out

    @torch.no_grad()
    def generate(self, shape: tuple[int, ...], labels: torch.Tensor | None = None, frames: int | None = None,
                 seed: int = 0, **kwargs) -> torch.Tensor:
        """Samples as data: pixels as they are, latents decoded by the VAE (to ``frames``)."""
        x = self.sample(shape, labels, seed, **kwargs)
        if self.vae is None:
            return x.clamp(-1, 1)
        return self.vae.decode(x / self.vae.scale_factor, frames).clamp(-1, 1)


class LatentVideoDataModule(pl.LightningDataModule):
    """Labelled one-object Shapes-world videos (``task="motion"`` or ``"shape"``), encoded
    once by a cached autoencoder and scaled by its ``scale_factor``: batches ``{"x": (B, z,
    T', H', W') latents, "y": (B,) labels}``. Encoding happens in ``setup`` (seconds), so
    every training step is a step of the denoiser alone."""

    def __init__(self, vae: str = "vae_kl", vae_overrides: list[str] | None = None, task: str = "motion",
                 num_train: int = 3000, num_val: int = 300, frames: int = 17, height: int = 64, width: int = 64,
                 batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        from ..data.worlds import MOTIONS, SHAPES

        return len(MOTIONS) if self.hparams.task == "motion" else len(SHAPES)

    @torch.no_grad()
    def _encode(self, n: int, seed: int) -> TensorDataset:
        hp = self.hparams
        videos, labels = render_task(hp.task, n, seed, hp.frames, hp.height, hp.width)
        latents = torch.cat([self.vae.encode(from_uint8(v)) for v in videos.split(64)]) * self.vae.scale_factor
        return TensorDataset(latents, labels)

    def prepare_data(self) -> None:
        # Runs once per machine before DDP ranks start: train and cache the VAE here if
        # needed, so ranks never train it concurrently.
        from .cached import load_or_train_vae

        load_or_train_vae(self.hparams.vae, *(self.hparams.vae_overrides or []))

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from .cached import load_or_train_vae

        hp = self.hparams
        self.vae = load_or_train_vae(hp.vae, *(hp.vae_overrides or []), verbose=False).eval()
        self.train_set = self._encode(hp.num_train, hp.seed)
        self.val_set = self._encode(hp.num_val, hp.seed + 10_000)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return {"x": x, "y": y}


class SampleLogger(pl.Callback):
    """Every ``every_n_steps``, draw one sample per class (seeded, so frames of the same
    sample can be compared across steps) and keep it in ``samples`` as ``(step, data)``;
    with a logger, also write a tiled ``samples/step_NNNNNN.png`` (images) or ``.mp4``
    (videos) in the run's log folder. ``kwargs`` go to the sampler (default: DDIM, 25 steps)."""

    def __init__(self, every_n_steps: int = 500, seed: int = 0, sampler: str | None = None, steps: int = 25,
                 guidance: float = 1.0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.seed = every_n_steps, seed
        self.kwargs = {"steps": steps, "guidance": guidance, **({"sampler": sampler} if sampler else {})}
        self.samples: list[tuple[int, torch.Tensor]] = []
        self._shape = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._shape = tuple(batch["x"].shape[1:])
        if trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._shape is not None and (not self.samples or self.samples[-1][0] != trainer.global_step):
            if trainer.is_global_zero:
                self.draw(trainer, pl_module)

    @torch.no_grad()
    def draw(self, trainer, pl_module: DiffusionModule) -> None:
        n = pl_module.hparams.num_classes
        labels = torch.arange(n) if n else None
        count = n or 8
        frames = getattr(getattr(trainer.datamodule, "hparams", {}), "get", lambda k, d=None: d)("frames")
        x = pl_module.generate((count, *self._shape), labels, frames=frames, seed=self.seed, **self.kwargs).cpu()
        self.samples.append((trainer.global_step, x))
        if trainer.logger is not None and trainer.log_dir:
            video = x if x.ndim == 5 else x[:, :, None]  # images as one-frame videos
            video = video.expand(-1, 3, -1, -1, -1) if video.shape[1] == 1 else video
            suffix = ".mp4" if video.shape[2] > 1 else ".png"
            save_video(Path(trainer.log_dir) / "samples" / f"step_{trainer.global_step:06d}{suffix}", tile(video, 5), scale=4)
