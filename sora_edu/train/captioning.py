"""Training the captioner and the prompt upsampler; recaptioning a dataset (notebook 08).

* :class:`CaptionModule` trains a :class:`~sora_edu.models.captioner.PrefixLM` with
  teacher forcing: on VAE latents and their detailed captions (the captioner, data from
  :class:`~sora_edu.train.text_video.TextVideoDataModule`), or on (short prompt, detailed
  caption) pairs (the upsampler, data from :class:`PromptPairsDataModule`).
* :func:`recaption` relabels every video of a set with the captioner (greedy, so it is
  deterministic), cached beside the latents.
* :func:`caption_accuracy` reads generated captions back into attributes
  (:func:`~sora_edu.data.worlds.parse_caption`) and compares them with the truth.

Batches: ``{"x": latents, "ids", "mask"}`` (captioner) or ``{"short_ids", "short_mask",
"ids", "mask"}`` (upsampler).
"""

from __future__ import annotations

from typing import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..data.worlds import MOTION_PHRASES, ShapesWorld, parse_caption
from ..models.captioner import PrefixLM, decode
from ..models.text import WordTokenizer
from .optim import warmup_cosine

ATTRIBUTES = ("shape", "colour", "size", "motion", "background")


def short_prompt(scene, rng: np.random.Generator) -> str:
    """What a user types: the object's shape and a random subset of its other attributes,
    in the world's words ("a red circle moves left", "a large square on a gray background")."""
    o = scene.objects[0]
    keep = {k for k in ("size", "colour", "motion", "background") if rng.random() < 0.5}
    text = "a " + " ".join([o.size] * ("size" in keep) + [o.colour] * ("colour" in keep) + [o.shape])
    if "motion" in keep:
        text += f" {MOTION_PHRASES[o.motion]}"
    if "background" in keep:
        text += f" on a {scene.background} background"
    return text


def caption_attributes(caption: str) -> dict | None:
    """The first object's attributes and the background named by a detailed caption, or
    None when the caption is not in the world's grammar."""
    try:
        parsed = parse_caption(caption)
    except ValueError:
        return None
    o = parsed["objects"][0]
    return {"shape": o["shape"], "colour": o["colour"], "size": o["size"], "motion": o["motion"],
            "background": parsed["background"]}


def caption_accuracy(generated: Sequence[str], truth: Sequence[str]) -> dict:
    """Per attribute: the fraction of generated captions that name the true value; plus
    ``all`` (every attribute right) and ``well_formed`` (parses as a world caption)."""
    if len(generated) != len(truth):
        raise ValueError(f"{len(generated)} captions for {len(truth)} truths")
    rows = [(caption_attributes(g), caption_attributes(t)) for g, t in zip(generated, truth)]
    out = {k: float(np.mean([g is not None and g[k] == t[k] for g, t in rows])) for k in ATTRIBUTES}
    out["all"] = float(np.mean([g is not None and all(g[k] == t[k] for k in ATTRIBUTES) for g, t in rows]))
    out["well_formed"] = float(np.mean([g is not None for g, _ in rows]))
    return out


class CaptionModule(pl.LightningModule):
    """Teacher-forced training of a prefix LM (captioner or upsampler) with AdamW + warmup-cosine.

    ``video_from`` (a cached CLIP config, e.g. ``"clip_t2v"``; ``video_overrides`` its
    overrides) starts the captioner's video tower from that CLIP's video tower, as LLaVA
    starts from CLIP's vision encoder: a tower that already had to tell videos apart by
    their captions. It trains on with the decoder.

    ``init_from`` (a cached captioner config, ``init_overrides`` its overrides) starts the
    whole network from that captioner's, to fine-tune it: notebook 08's image captioner is
    the video captioner fine-tuned on one-frame clips (96 % of held-out images fully right
    after 200 steps, vs 93 % for 400 steps from the CLIP; README "Measured").

    Either model must have read latents of the same autoencoder as this module's data
    (checked in ``setup``); it is trained first if it is not cached."""

    def __init__(self, net: PrefixLM, lr: float = 1e-3, warmup_steps: int = 50, weight_decay: float = 0.01,
                 max_len: int = 24, video_from: str | None = None, video_overrides: list[str] | None = None,
                 init_from: str | None = None, init_overrides: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.tokenizer = WordTokenizer.for_world()
        if net.embed.num_embeddings != len(self.tokenizer):
            raise ValueError(f"the network has {net.embed.num_embeddings} words but the world's tokenizer has "
                             f"{len(self.tokenizer)}: set vocab_size={len(self.tokenizer)}")
        if video_from and net.video is None:
            raise ValueError("video_from starts a captioner's video tower: this network has a text prefix")
        if video_from and init_from:
            raise ValueError("init_from starts the whole network, its video tower too: set video_from=null")

    def _start(self) -> tuple[str, str, list[str]] | None:
        """``(argument, config, overrides)`` of the cached model a fresh fit starts from, if any."""
        hp = self.hparams
        if hp.init_from:
            return "init_from", hp.init_from, list(hp.init_overrides or [])
        if hp.video_from:
            return "video_from", hp.video_from, list(hp.video_overrides or [])
        return None

    def _source(self):
        from .cached import load_or_train

        _, config, overrides = self._start()
        return load_or_train(config, *overrides, verbose=False)

    def prepare_data(self) -> None:
        if self._start():  # trained here if absent (rank 0, before DDP ranks start)
            self._source()

    def setup(self, stage: str) -> None:
        from .cached import fresh_fit

        if self._start() and fresh_fit(self, stage, "_initialised"):
            self.check_source_data(getattr(self._trainer, "datamodule", None))
            source = self._source().net
            if self.hparams.init_from:
                self.initialise_from(source)
            else:
                self.initialise_video_from(source.video)
            self._initialised = True

    def check_source_data(self, datamodule) -> None:
        """The model named by ``video_from`` / ``init_from`` must have read latents of this data's autoencoder."""
        from .cached import QUIET
        from .cli import from_config
        from .diffusion import EncodedDataModule

        mine = EncodedDataModule.autoencoder_of(datamodule)
        if mine is None:
            return
        argument, config, overrides = self._start()
        theirs = EncodedDataModule.autoencoder_of(from_config(config, *QUIET, *overrides).datamodule)
        if theirs != mine:
            raise ValueError(f"{argument}={config!r} read latents of {theirs[0]!r} {theirs[1]} but the captioner's "
                             f"data are {mine[0]!r} {mine[1]}: give {argument.replace('_from', '_overrides')} "
                             f"the same --data.init_args.vae_overrides")

    @torch.no_grad()
    def initialise_from(self, net: torch.nn.Module) -> None:
        """Copy a trained captioner's weights into this one (the same architecture)."""
        from .cached import copy_weights

        copy_weights(self.net, net, f"init_from={self.hparams.init_from!r}: its network does not match this one",
                     "give both the same net init_args")

    @torch.no_grad()
    def initialise_video_from(self, tower: torch.nn.Module) -> None:
        """Copy a CLIP video tower's weights into the captioner's (same patch size, width, depth)."""
        from .cached import copy_weights

        copy_weights(self.net.video, tower,
                     f"video_from={self.hparams.video_from!r}: its video tower does not match the captioner's",
                     "give both the same patch_size, width (dim) and depth (video_depth)")

    def _prefix(self, batch):
        if self.net.prefix == "video":
            return batch["x"]
        return {"ids": batch["short_ids"], "mask": batch["short_mask"]}

    def training_step(self, batch, batch_idx):
        loss = self.net.loss(self._prefix(batch), batch["ids"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net.loss(self._prefix(batch), batch["ids"], batch["mask"]), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.trainer.estimated_stepping_batches)}

    @torch.no_grad()
    def caption(self, latents: torch.Tensor, method: str = "greedy", batch_size: int = 256, seed: int = 0,
                **decoding) -> list[str]:
        """Captions of scaled VAE latents ``(N, C, T, H, W)`` (the captioner)."""
        self.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for part in latents.split(batch_size):
            # max_len - 1: with <bos> and <eos> the caption still fits the text model's max_len
            ids = self.net.generate(part.to(self.device), self.hparams.max_len - 1, method, generator=g, **decoding)
            out += decode(self.tokenizer, ids.cpu())
        return out

    @torch.no_grad()
    def upsample(self, prompts: Sequence[str], n: int = 1, method: str = "sample", temperature: float = 1.0,
                 seed: int = 0, **decoding) -> list[list[str]]:
        """``n`` detailed captions for each short prompt (the upsampler). Unknown words and
        empty prompts raise: the upsampler would only guess."""
        self.eval()
        for p in prompts:
            if not p.strip():
                raise ValueError("an empty prompt: say at least a shape (e.g. 'a red circle')")
            unknown = self.tokenizer.unknown(p)
            if unknown:
                raise ValueError(f"unknown words {unknown} in {p!r}: the upsampler knows the Shapes world's words")
        ids, mask = self.tokenizer.encode([p for p in prompts for _ in range(n)], max_len=self.hparams.max_len)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = self.net.generate({"ids": ids.to(self.device), "mask": mask.to(self.device)}, self.hparams.max_len - 1,
                                method, temperature=temperature, generator=g, **decoding)
        texts = decode(self.tokenizer, out.cpu())
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


class PromptPairsDataModule(pl.LightningDataModule):
    """(short prompt, detailed caption) pairs from the text-to-video world's scenes (drawn,
    never rendered: milliseconds). Validation scenes use ``seed + 10_000``."""

    def __init__(self, num_train: int = 20_000, num_val: int = 512, batch_size: int = 128, max_len: int = 24,
                 seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def pairs(self, n: int, seed: int) -> tuple[list[str], list[str]]:
        from .text_video import T2V_WORLD, _ENDLESS

        world = ShapesWorld(_ENDLESS, 16, 64, 64, seed, T2V_WORLD)
        shorts, details = [], []
        for i in range(n):
            scene, rng = world.scene(i)
            shorts.append(short_prompt(scene, rng))
            details.append(scene.caption())
        return shorts, details

    def _tensors(self, n: int, seed: int) -> TensorDataset:
        tok, L = WordTokenizer.for_world(), self.hparams.max_len
        shorts, details = self.pairs(n, seed)
        return TensorDataset(*tok.encode(shorts, max_len=L), *tok.encode(details, max_len=L))

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.train_set = self._tensors(self.hparams.num_train, self.hparams.seed)
            self.val_set = self._tensors(self.hparams.num_val, self.hparams.seed + 10_000)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        short_ids, short_mask, ids, mask = batch
        return {"short_ids": short_ids, "short_mask": short_mask, "ids": ids, "mask": mask}


def recaption(captioner: CaptionModule | Callable[[], CaptionModule], latents: torch.Tensor,
              cache: str | None = None) -> list[str]:
    """Greedy captions for every latent (deterministic), read from ``cache`` (a JSON file)
    when it exists, else computed and written there atomically. ``captioner`` may be a
    function that returns one, called only when the captions are not cached."""
    import json
    from pathlib import Path

    from ..viz import write_atomic

    if cache is not None and Path(cache).exists():
        captions = json.loads(Path(cache).read_text())
        if len(captions) == len(latents):
            return captions
    if not hasattr(captioner, "caption"):  # a function that loads one
        captioner = captioner()
    captions = captioner.caption(latents, "greedy")
    if cache is not None:
        write_atomic(Path(cache), json.dumps(captions).encode())
    return captions


__all__ = ["ATTRIBUTES", "CaptionModule", "PromptPairsDataModule", "caption_accuracy", "caption_attributes",
           "recaption", "short_prompt"]
