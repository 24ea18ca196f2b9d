"""A LightningModule for diffusion training, in pixel or latent space (notebook 05).

The network is any ``net(x, t, cond)`` (the U-Net here, the DiT later); the objective,
schedule and condition dropout come from the config. With ``vae`` set (a cached
autoencoder config, e.g. ``"vae_kl"``) the module works in that autoencoder's latent
space: it expects latents already scaled by the VAE's ``scale_factor`` (the
:class:`LatentVideoDataModule` makes them) and :meth:`generate` decodes its samples to
videos. Weight EMA comes from the :class:`~sora_edu.train.callbacks.EMA` callback.

Batches: ``{"x": (B, C, ...) data or scaled latents}`` plus the condition: ``"y": (B,)``
labels (class-conditional) or ``"ids", "mask": (B, L)`` tokenised captions (text-conditional:
a network with a text encoder, ``net.text``; the null condition is the empty prompt).
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
    PROMPT_LEN = 24  # tokens a prompt is padded to when sampling (the encoder is padding-invariant)

    def __init__(self, net: nn.Module, objective: str = "eps", schedule: str = "cosine", timesteps: int = 1000,
                 num_classes: int | None = 10, cond_drop: float = 0.1, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 100, vae: str | None = None, vae_overrides: list[str] | None = None,
                 clip: float | None = 1.0, flow_times: str = "uniform") -> None:
        super().__init__()
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.diffusion = Diffusion(objective, schedule, timesteps, flow_times)
        # The autoencoder is kept outside the module tree (not a submodule): the checkpoint
        # holds the denoiser only, and the optimiser and .train() never touch the VAE.
        self.__dict__["_vae"] = None
        self.tokenizer = None
        if self.is_text:
            from ..models.text import WordTokenizer

            self.tokenizer = WordTokenizer.for_world()
            if net.text.embed.num_embeddings != len(self.tokenizer):
                raise ValueError(f"the network's text vocabulary has {net.text.embed.num_embeddings} words but the "
                                 f"world's tokenizer has {len(self.tokenizer)}: set net vocab_size={len(self.tokenizer)}")

    # --- conditions ---------------------------------------------------------------------

    @property
    def is_text(self) -> bool:
        return getattr(self.net, "text", None) is not None

    def null(self, batch: int, like: dict | None = None):
        """The null condition: the extra label ``num_classes``, or the empty prompt (padded
        like the text condition ``like``)."""
        if self.is_text:
            max_len = like["ids"].shape[1] if like is not None else self.PROMPT_LEN
            ids, mask = self.tokenizer.encode([""] * batch, max_len=max_len)
            return {"ids": ids.to(self.device), "mask": mask.to(self.device)}
        n = self.hparams.num_classes
        return None if n is None else torch.full((batch,), n, dtype=torch.long, device=self.device)

    def drop(self, cond):
        """Replace a ``cond_drop`` fraction of conditions by the null one (for CFG)."""
        if cond is None or self.hparams.cond_drop == 0:
            return cond
        batch = len(cond["ids"]) if isinstance(cond, dict) else len(cond)
        keep = torch.rand(batch, device=self.device) >= self.hparams.cond_drop
        null = self.null(batch, like=cond)
        if isinstance(cond, dict):
            return {k: torch.where(keep[:, None], cond[k], null[k]) for k in ("ids", "mask")}
        return torch.where(keep, cond, null)

    def condition(self, batch: dict):
        """The condition a batch carries: text tokens, labels, or None."""
        if self.is_text:
            return {"ids": batch["ids"], "mask": batch["mask"]}
        return batch["y"] if self.hparams.num_classes else None

    def encode_prompts(self, prompts: list[str], max_len: int = PROMPT_LEN) -> dict:
        """Prompts -> the text condition ``{"ids", "mask"}`` on the module's device."""
        if not self.is_text:
            raise ValueError("this model is not text-conditional")
        ids, mask = self.tokenizer.encode(prompts, max_len=max_len)
        return {"ids": ids.to(self.device), "mask": mask.to(self.device)}

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
        loss = self.diffusion.loss(self.net, batch["x"], self.drop(self.condition(batch)))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed times and noise, so the validation loss is comparable across steps.
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        self.log("val/loss", self.diffusion.loss(self.net, batch["x"], self.condition(batch), generator=g), prog_bar=True)

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
    def sample(self, shape: tuple[int, ...], cond=None, seed: int = 0, **kwargs) -> torch.Tensor:
        """Samples in the model's own space (pixels or scaled latents). ``cond``: labels
        ``(B,)``, prompts (a list of strings) or a text condition dict. ``kwargs`` go to
        :func:`sora_edu.diffusion.sample` (sampler, steps, eta, guidance, chain)."""
        was_training = self.training
        self.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        if isinstance(cond, (list, tuple)):
            cond = self.encode_prompts(list(cond))
        elif isinstance(cond, dict):
            cond = {k: v.to(self.device) for k, v in cond.items()}
        elif cond is not None:
            cond = cond.to(self.device)
        kwargs.setdefault("sampler", "euler" if self.diffusion.is_flow else "ddim")
        kwargs.setdefault("clip", self.hparams.clip)
        null = self.null(shape[0], like=cond if isinstance(cond, dict) else None) if cond is not None else None
        out = sample(self.diffusion, self.net, shape, cond, null_cond=null, generator=g, device=self.device, **kwargs)
        self.train(was_training)
        return out

    @torch.no_grad()
    def generate(self, shape: tuple[int, ...], cond=None, frames: int | None = None,
                 seed: int = 0, **kwargs) -> torch.Tensor:
        """Samples as data: pixels as they are, latents decoded by the VAE (to ``frames``)."""
        x = self.sample(shape, cond, seed, **kwargs)
        if self.vae is None:
            return x.clamp(-1, 1)
        return self.vae.decode(x / self.vae.scale_factor, frames).clamp(-1, 1)


class EncodedDataModule(pl.LightningDataModule):
    """What every data module of pre-encoded latents shares: the cached autoencoder named by
    ``hparams.vae`` is trained in ``prepare_data`` (once per machine, before DDP ranks
    start, so they never train it concurrently), and ``train_set`` / ``val_set`` are served
    shuffled (seeded) and in order."""

    def prepare_data(self) -> None:
        from .cached import load_or_train_vae

        load_or_train_vae(self.hparams.vae, *(self.hparams.vae_overrides or []))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class LatentVideoDataModule(EncodedDataModule):
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

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from .cached import load_or_train_vae

        hp = self.hparams
        self.vae = load_or_train_vae(hp.vae, *(hp.vae_overrides or []), verbose=False).eval()
        self.train_set = self._encode(hp.num_train, hp.seed)
        self.val_set = self._encode(hp.num_val, hp.seed + 10_000)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return {"x": x, "y": y}


class SampleLogger(pl.Callback):
    """Every ``every_n_steps``, draw one sample per class or example prompt (seeded, so frames of the same
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
        if pl_module.is_text:  # the data module's example prompts (seen and held-out ones)
            cond = list(trainer.datamodule.example_prompts)
            count = len(cond)
        else:
            cond, count = (torch.arange(n), n) if n else (None, 8)
        frames = getattr(getattr(trainer.datamodule, "hparams", {}), "get", lambda k, d=None: d)("frames")
        x = pl_module.generate((count, *self._shape), cond, frames=frames, seed=self.seed, **self.kwargs).cpu()
        self.samples.append((trainer.global_step, x))
        if trainer.logger is not None and trainer.log_dir:
            video = x if x.ndim == 5 else x[:, :, None]  # images as one-frame videos
            video = video.expand(-1, 3, -1, -1, -1) if video.shape[1] == 1 else video
            suffix = ".mp4" if video.shape[2] > 1 else ".png"
            save_video(Path(trainer.log_dir) / "samples" / f"step_{trainer.global_step:06d}{suffix}", tile(video, 5), scale=4)
