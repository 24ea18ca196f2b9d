"""A LightningModule for diffusion training, in pixel or latent space (notebook 05).

The network is any ``net(x, t, cond)`` (the U-Net here, the DiT later); the objective,
schedule and condition dropout come from the config. With ``vae`` set (a cached
autoencoder config, e.g. ``"vae_kl"``) the module works in that autoencoder's latent
space: it expects latents already scaled by the VAE's ``scale_factor`` (the
:class:`LatentVideoDataModule` makes them) and :meth:`generate` decodes its samples to
videos. Weight EMA comes from the :class:`~sora_edu.train.callbacks.EMA` callback.
``self_condition=True`` also feeds the network its own previous ``x0`` estimate (a network
with ``extra_channels = in_channels``; notebook 06 measures it as a lever). ``repa_from``
(a cached CLIP config) adds REPA's alignment of the network's bottleneck features to that
CLIP's frozen video tokens, weighted by ``repa_weight`` (a network with ``feature_dim`` and
``forward(..., features=True)``, the U-Net; ``t2v_unet.yaml`` uses it). ``probe_from`` (a
cached :class:`~sora_edu.models.probe.ShapeProbe` config, ``probe_t2v``) adds a second such
target: the U-Net's down-path features at ``probe_level`` aligned to the probe's features
of the clean latent at the same resolution, weighted by ``probe_weight``. ``autoguide_at``
(a fraction of the training steps) keeps a copy of the EMA weights from that point,
``weak_net``, in the checkpoint: sampling with ``autoguidance=a`` guides the final network
away from that weaker self (Karras et al., arXiv 2406.02507), at no extra training cost.
``input_perturbation = g`` makes each training input with noise ``+ g N(0, 1)`` while the
target keeps the noise (Ning et al., arXiv 2301.11706): states a little off the forward
process, as the sampler's own errors make them (measured on ``t2v_unet`` at 0.1: no gain).
``target_memo = n`` keeps the frozen towers' targets of up to ``n`` training clips
(:class:`~sora_edu.train.memo.TargetMemo`, bf16): computed once per clip, not once per step.
``segment_weight > 0`` adds a linear head on the network's full-resolution features (the
U-Net's ``"last"``) that must name, for every latent cell of the *clean* clip, its share of
background and of each shape (the renderer's segmentation, pooled to the latent grid:
batches carry ``"shape_map"``, :class:`~sora_edu.train.text_video.TextVideoDataModule` with
``shape_maps=True``), read from the noisy input: REPA's idea with the world's ground truth as
the teacher, at the resolution where a small cross's corners are drawn.
``layout_from`` (a cached :class:`~sora_edu.train.layout.LayoutModule` config, ``layout_t2v``)
makes the model the video stage of a two-stage one (:mod:`sora_edu.models.layout`): it
trains on the true box of the object in every frame (batches carry ``"boxes"``,
:class:`~sora_edu.train.text_video.TextVideoDataModule` with ``layouts=True``), handed to a
network with ``layout_channels`` as :func:`~sora_edu.models.layout.box_coordinates` folded
into the latent grid, and samples in boxes that planner draws for the prompt (or in
``boxes=`` you give). ``layout_weight = w`` weighs the loss ``w`` times in the latent cells
the object's box touches: a weight that depends on the condition, so, unlike one that
depends on the target, it does not move the optimum. ``layout_fourier = F`` adds
:func:`~sora_edu.models.layout.box_fourier`'s ``(2F + 1)**2`` channels (each latent cell's mean
of the Fourier basis of its pixels' place in the box) after the coordinates, so that a shape's
coverage of a cell is linear in the network's input; ``layout_coordinates=False`` then drops
the coordinates (``t2v_fast.yaml``: 81 channels instead of 128; the network's
``layout_channels`` count what is kept).
``text_lr_scale`` multiplies the learning rate of the network's text encoder (0 freezes it,
as Imagen keeps T5 frozen; measured on ``t2v_unet`` with ``text_from``: colour learned
sooner, the same final figure). ``sigma_data`` is ``flow_skip``'s data scale (see
:class:`~sora_edu.diffusion.Diffusion`).

Batches: ``{"x": (B, C, ...) data or scaled latents}`` plus the condition: ``"y": (B,)``
labels (class-conditional) or ``"ids", "mask": (B, L)`` tokenised captions (text-conditional:
a network with a text encoder, ``net.text``; the null condition is the empty prompt).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
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
                 clip: float | None = 1.0, flow_times: str = "uniform", latent_norm: str = "global",
                 tokenizer: str | None = None, compile: bool = False, loss_weight: str = "none",
                 frame_masks: list[str] | None = None, image_prob: float = 0.0, init_from: str | None = None,
                 init_overrides: list[str] | None = None, flow_shift: float = 1.0, text_from: str | None = None,
                 text_overrides: list[str] | None = None, snr_gamma: float = 5.0, self_condition: bool = False,
                 repa_from: str | None = None, repa_overrides: list[str] | None = None, repa_weight: float = 0.5,
                 autoguide_at: float | None = None, input_perturbation: float = 0.0, probe_from: str | None = None,
                 probe_overrides: list[str] | None = None, probe_weight: float = 0.2, probe_level: int = 1,
                 target_memo: int = 0, segment_weight: float = 0.0, text_lr_scale: float = 1.0,
                 sigma_data: float = 1.0, layout_from: str | None = None, layout_overrides: list[str] | None = None,
                 layout_weight: float = 1.0, layout_fourier: int = 0, layout_coordinates: bool = True) -> None:
        super().__init__()
        if bool(layout_from) != bool(getattr(net, "layout_channels", 0)):
            raise ValueError("layout_from (the planner) and a network with layout_channels (what draws in its boxes) "
                             f"go together: got layout_from={layout_from!r}, "
                             f"layout_channels={getattr(net, 'layout_channels', 0)}")
        if layout_from and not vae:
            raise ValueError("layout_from: the layout is folded into an autoencoder's latent grid: set vae")
        if layout_weight < 1.0 or (layout_weight != 1.0 and not layout_from):
            raise ValueError(f"layout_weight (>= 1) weighs the layout's object cells: it needs layout_from, "
                             f"got {layout_weight} with layout_from={layout_from!r}")
        if layout_fourier < 0 or (layout_fourier and not layout_from):
            raise ValueError(f"layout_fourier (>= 0 frequencies per axis) adds Fourier features of the layout's boxes: "
                             f"it needs layout_from, got {layout_fourier} with layout_from={layout_from!r}")
        if not layout_coordinates and not layout_fourier:
            raise ValueError("layout_coordinates=False leaves the Fourier features alone: set layout_fourier too")
        if text_lr_scale < 0:
            raise ValueError(f"text_lr_scale multiplies the learning rate of the text encoder (0 freezes it), "
                             f"got {text_lr_scale}")
        if segment_weight < 0:
            raise ValueError(f"segment_weight must be >= 0, got {segment_weight}")
        if target_memo < 0:
            raise ValueError(f"target_memo is a number of clips (0: off), got {target_memo}")
        if input_perturbation < 0:
            raise ValueError(f"input_perturbation must be >= 0, got {input_perturbation}")
        if autoguide_at is not None and not 0.0 < autoguide_at < 1.0:
            raise ValueError(f"autoguide_at is the fraction of training at which the weak model is kept, in (0, 1); "
                             f"got {autoguide_at}")
        plain_only = [name for name, on in (("repa_from", repa_from), ("probe_from", probe_from),
                                            ("segment_weight", segment_weight > 0),
                                            ("autoguide_at", autoguide_at is not None)) if on]
        if plain_only and (frame_masks or self_condition):
            raise ValueError(f"{' and '.join(plain_only)}: for the plain denoiser (its features, its weights), "
                             "not with frame_masks or self_condition")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        if frame_masks:
            from ..diffusion.frames import MASKS

            unknown = [k for k in frame_masks if k not in MASKS]
            if unknown:
                raise ValueError(f"frame_masks: unknown kinds {unknown}; known: {MASKS}")
            if getattr(net, "extra_channels", 0) != 1:
                raise ValueError("frame_masks needs a network with extra_channels=1 (the mask channel)")
        if self_condition:
            if frame_masks:
                raise ValueError("self_condition and frame_masks both feed extra input channels: use one")
            if getattr(net, "extra_channels", 0) != getattr(net, "in_channels", None):
                raise ValueError(f"self_condition feeds the previous x0 estimate as extra channels: the network needs "
                                 f"extra_channels = in_channels ({getattr(net, 'in_channels', None)}), "
                                 f"got {getattr(net, 'extra_channels', 0)}")
        if not 0.0 <= image_prob < 1.0:
            raise ValueError(f"image_prob must be in [0, 1), got {image_prob}")
        if latent_norm not in ("global", "channel"):
            raise ValueError(f"latent_norm must be 'global' or 'channel', got {latent_norm!r}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.diffusion = Diffusion(objective, schedule, timesteps, flow_times, loss_weight, snr_gamma, flow_shift,
                                   sigma_data)
        # The autoencoder is kept outside the module tree (not a submodule): the checkpoint
        # holds the denoiser only, and the optimiser and .train() never touch the VAE.
        self.__dict__["_vae"] = None
        if latent_norm == "channel":
            # Per-channel mean and std of the training latents, measured once in `setup` and
            # kept in the checkpoint: the denoiser sees zero-mean, unit-variance channels.
            self.register_buffer("latent_mean", torch.zeros(net_channels(net)))
            self.register_buffer("latent_std", torch.zeros(net_channels(net)))
        self.__dict__["_repa_tower"] = None
        if repa_from:
            from .cli import from_config
            from .cached import QUIET

            if not hasattr(net, "feature_dim"):
                raise ValueError(f"repa_from needs a network that returns its features ({type(net).__name__} does not)")
            # The target's width, read off the config (nothing is trained or loaded here).
            width = from_config(repa_from, *QUIET, *(repa_overrides or [])).model.net.video.dim
            self.repa_proj = nn.Sequential(nn.Linear(net.feature_dim, 256), nn.SiLU(), nn.Linear(256, width))
        self.__dict__["_probe"] = None
        self.__dict__["_planner"] = None
        # Not state: refilled from the data in each process (and each DDP rank) that trains.
        self.__dict__["_memo"] = None
        if probe_from:
            from .cli import from_config
            from .cached import QUIET

            if not hasattr(net, "feature_width"):
                raise ValueError(f"probe_from needs a network that returns its features by level ({type(net).__name__} "
                                 "does not)")
            width = from_config(probe_from, *QUIET, *(probe_overrides or [])).model.net.dim
            self.probe_proj = nn.Sequential(nn.Linear(net.feature_width(probe_level), 256), nn.SiLU(),
                                            nn.Linear(256, width))
        if segment_weight > 0:
            from ..data.worlds import SHAPES

            if not hasattr(net, "feature_width"):
                raise ValueError(f"segment_weight needs a network that returns its features by level "
                                 f"({type(net).__name__} does not)")
            self.segment_head = nn.Linear(net.feature_width("last"), 1 + len(SHAPES))  # background, then SHAPES
        if autoguide_at is not None:
            # Autoguidance's weak model: the same network, frozen, overwritten once in training
            # (`on_train_batch_end`); `weak_step` (0 until then) is saved with it.
            import copy

            self.weak_net = copy.deepcopy(net).requires_grad_(False)
            self.register_buffer("weak_step", torch.zeros((), dtype=torch.long))
        self.tokenizer = None
        if self.is_text:
            from ..models.text import WordTokenizer

            # The Shapes world's words, or a vocabulary file (`sora-edu encode` writes one for your captions).
            self.tokenizer = WordTokenizer.load_or_world(tokenizer)
            if net.text.embed.num_embeddings != len(self.tokenizer):
                raise ValueError(f"the network's text vocabulary has {net.text.embed.num_embeddings} words but the "
                                 f"world's tokenizer has {len(self.tokenizer)}: set net vocab_size={len(self.tokenizer)}")
        elif text_from:
            raise ValueError("text_from needs a text-conditional network (vocab_size set)")

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
            null = {"ids": ids.to(self.device), "mask": mask.to(self.device)}
            if like is not None and "layout" in like:  # guidance is on the words; the boxes stay
                null["layout"] = like["layout"]
            return null
        n = self.hparams.num_classes
        return None if n is None else torch.full((batch,), n, dtype=torch.long, device=self.device)

    def drop(self, cond):
        """Replace a ``cond_drop`` fraction of conditions by the null one (for CFG)."""
        if cond is None or self.hparams.cond_drop == 0:
            return cond
        batch = len(cond["ids"]) if isinstance(cond, dict) else len(cond)
        keep = self._rank_slice(lambda n: torch.rand(n, device=self.device), batch) >= self.hparams.cond_drop
        null = self.null(batch, like=cond)
        if isinstance(cond, dict):  # a layout, if any, is kept: only the words are dropped
            return {**cond, **{k: torch.where(keep[:, None], cond[k], null[k]) for k in ("ids", "mask")}}
        return torch.where(keep, cond, null)

    def condition(self, batch: dict):
        """The condition a batch carries: text tokens (and the layout's maps), labels, or None."""
        if self.is_text:
            cond = {"ids": batch["ids"], "mask": batch["mask"]}
            if self.hparams.layout_from:
                cond["layout"] = self.layout_maps(self._boxes(batch), batch["x"].shape)
            return cond
        return batch["y"] if self.hparams.num_classes else None

    @staticmethod
    def _boxes(batch: dict) -> torch.Tensor:
        if "boxes" not in batch:
            raise ValueError("layout_from trains on each clip's boxes (batch 'boxes' (B, T, 4)): "
                             "set data.init_args.layouts: true (TextVideoDataModule)")
        return batch["boxes"]

    def layout_maps(self, boxes: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Boxes ``(B, T, 4)`` (pixels) -> the network's layout channels ``(B, [2 P] [+ (2F + 1)**2], T', h, w)``
        for latents of ``latent_shape (B, C, T', h, w)``: every pixel's place in its box
        (:func:`~sora_edu.models.layout.box_coordinates`), each latent cell's ``P`` pixels side
        by side, as the autoencoder folds them (unless ``layout_coordinates=False``); with
        ``layout_fourier = F``, then each cell's mean Fourier basis of those places
        (:func:`~sora_edu.models.layout.box_fourier`)."""
        from ..models.layout import box_coordinates, box_fourier, check_boxes

        vae = self.vae
        *_, frames, h, w = latent_shape
        check_boxes(boxes)
        if vae.latent_frames(boxes.shape[1]) != frames:
            raise ValueError(f"{boxes.shape[1]} frames of boxes make {vae.latent_frames(boxes.shape[1])} latent frames, "
                             f"the latents have {frames}")
        boxes = boxes.to(self.device)
        s = vae.space_factor
        maps = []
        if self.hparams.layout_coordinates:
            maps.append(vae.fold_to_latent(box_coordinates(boxes, h * s, w * s)).flatten(1, 2))
        if self.hparams.layout_fourier:
            weights = vae.frame_weights(boxes.shape[1])
            maps.append(box_fourier(boxes, h * s, w * s, self.hparams.layout_fourier, cell=s, frame_weights=weights))
        return torch.cat(maps, 1) if len(maps) > 1 else maps[0]

    def box_weight(self, boxes: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """``(B, 1, T', h, w)``: ``layout_weight`` in the latent cells within one cell of the
        object's box in any of their frames, 1 elsewhere (:meth:`Diffusion.loss`'s ``weight``)."""
        vae = self.vae
        *_, h, w = latent_shape
        pad = vae.space_factor
        xs = torch.arange(w * pad, device=boxes.device) + 0.5
        ys = torch.arange(h * pad, device=boxes.device) + 0.5
        in_x = (xs >= boxes[..., :1] - pad) & (xs <= boxes[..., 2:3] + pad)  # (B, T, W)
        in_y = (ys >= boxes[..., 1:2] - pad) & (ys <= boxes[..., 3:] + pad)  # (B, T, H)
        # a cell meets the padded box in a frame iff its columns and its rows both do (the box
        # is a product of two intervals), so nothing is made at pixel resolution
        cols, rows = in_x.unflatten(2, (w, pad)).any(3), in_y.unflatten(2, (h, pad)).any(3)
        per_frame = rows[..., :, None] & cols[..., None, :]  # (B, T, h, w)
        group = vae.frame_weights(boxes.shape[1]).to(boxes.device) > 0  # (T', T): each latent frame's frames
        cells = (group[None, :, :, None, None] & per_frame[:, None]).any(2)[:, None].float()  # (B, 1, T', h, w)
        return 1 + (self.hparams.layout_weight - 1) * cells

    def encode_prompts(self, prompts: list[str], max_len: int = PROMPT_LEN) -> dict:
        """Prompts -> the text condition ``{"ids", "mask"}`` on the module's device."""
        if not self.is_text:
            raise ValueError("this model is not text-conditional")
        ids, mask = self.tokenizer.encode(prompts, max_len=max_len)
        return {"ids": ids.to(self.device), "mask": mask.to(self.device)}

    def prepare_data(self) -> None:
        # The cached CLIPs are trained here (rank 0, before DDP ranks start), like the VAE.
        if self.hparams.text_from:
            self.clip_text_tower()
        if self.hparams.repa_from:
            self.repa_tower()
        if self.hparams.probe_from:
            self.probe_tower()
        if self.hparams.layout_from:
            self.planner  # noqa: B018 -- trained here if absent

    def repa_tower(self) -> nn.Module:
        """The frozen video tower of the cached CLIP named by ``repa_from`` (trained if absent):
        the representation the denoiser's bottleneck is aligned to. Kept outside the module
        tree, like the VAE: not in the checkpoint, never optimised."""
        if self._repa_tower is None:
            from .cached import load_or_train

            clip = load_or_train(self.hparams.repa_from, *(self.hparams.repa_overrides or []), verbose=False)
            self.__dict__["_repa_tower"] = clip.net.video.eval().requires_grad_(False)
        return self._repa_tower.to(self.device)

    def probe_tower(self) -> nn.Module:
        """The frozen shape probe named by ``probe_from`` (trained if absent), kept outside the
        module tree like :meth:`repa_tower`."""
        if self._probe is None:
            from .cached import load_or_train

            probe = load_or_train(self.hparams.probe_from, *(self.hparams.probe_overrides or []), verbose=False)
            self.__dict__["_probe"] = probe.net.eval().requires_grad_(False)
        return self._probe.to(self.device)

    @property
    def planner(self):
        """The frozen layout stage named by ``layout_from`` (a cached
        :class:`~sora_edu.train.layout.LayoutModule`, trained if absent), kept outside the
        module tree like the VAE: it plans the boxes the video is drawn in."""
        if self._planner is None:
            from .cached import load_or_train

            planner = load_or_train(self.hparams.layout_from, *(self.hparams.layout_overrides or []), verbose=False)
            self.__dict__["_planner"] = planner.eval().requires_grad_(False)
        return self._planner.to(self.device)

    def clip_text_tower(self) -> nn.Module:
        """The text tower of the cached CLIP named by ``text_from`` (trained if absent)."""
        from .cached import load_or_train

        return load_or_train(self.hparams.text_from, *(self.hparams.text_overrides or []), verbose=False).net.text

    @torch.no_grad()
    def initialise_text_from(self, tower: nn.Module) -> None:
        """Start the text encoder from a contrastively trained one (``text_from``; it trains on
        with the denoiser). Trained jointly from scratch on the Shapes world, the encoder learns
        colour and shape words but not motion: swapping "left" for "right" leaves the trained
        denoiser's loss unchanged at every noise level (measured, notebook 06), while CLIP's text
        tower has had to tell videos apart by those words -- as Imagen (arXiv 2205.11487) and
        Stable Diffusion condition on a pretrained text encoder rather than learn one."""
        from .cached import copy_weights

        copy_weights(self.net.text, tower,
                     f"text_from={self.hparams.text_from!r}: its text tower does not match this network's text encoder",
                     "give both the same vocab_size, text_dim and text_depth")

    @torch.no_grad()
    def initialise_from(self, source: nn.Module) -> list[str]:
        """Start from another denoiser's weights (``init_from``: fine-tune the cached t2v model
        into the frame-conditioned one). Weights of one shape are copied; an input layer that
        gained channels (the mask channel) gets the old weights and zeros for the new ones,
        so the start computes what the source did. Returns the names not copied."""
        theirs, skipped = source.state_dict(), []
        for name, mine in self.net.state_dict().items():
            old = theirs.get(name)
            if old is not None and old.shape == mine.shape:
                mine.copy_(old)
            elif old is not None and old.ndim >= 2 and old.shape[0] == mine.shape[0] and old.shape[2:] == mine.shape[2:] \
                    and old.shape[1] < mine.shape[1]:
                mine.zero_()
                mine[:, :old.shape[1]].copy_(old)
            else:
                skipped.append(name)
        return skipped

    def setup(self, stage: str) -> None:
        from .cached import fresh_fit

        if self.hparams.init_from and fresh_fit(self, stage, "_initialised"):
            from .cached import load_or_train

            skipped = self.initialise_from(load_or_train(self.hparams.init_from, *(self.hparams.init_overrides or []),
                                                         verbose=False).net)
            self._initialised = True
            if skipped:
                raise ValueError(f"init_from={self.hparams.init_from!r}: {len(skipped)} weights do not fit ({skipped[:4]})")
        if self.hparams.text_from and fresh_fit(self, stage, "_text_initialised"):
            self.initialise_text_from(self.clip_text_tower())
            self._text_initialised = True
        if self.hparams.compile and stage == "fit":
            self.net.compile()  # in place: the state dict keeps its keys, so checkpoints stay portable
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            self.check_data(dm)
            if getattr(dm, "vae", None) is not None and self.hparams.vae is not None:
                # The same cached autoencoder the data were encoded with: no second load.
                self.__dict__["_vae"] = dm.vae.requires_grad_(False)
            if self.hparams.latent_norm == "channel" and not self.latent_std.any():
                latents = getattr(dm, "train_latents", None)
                if latents is None:
                    raise ValueError(f"latent_norm='channel' measures the training latents, but "
                                     f"{type(dm).__name__} has no train_latents: use latent_norm='global'")
                self.measure_latents(latents)

    @torch.no_grad()
    def measure_latents(self, latents: torch.Tensor) -> None:
        """Set the per-channel statistics from training latents ``(N, C, T, H, W)``."""
        dims = [0, *range(2, latents.ndim)]
        self.latent_mean.copy_(latents.mean(dims))
        self.latent_std.copy_(latents.std(dims).clamp_min(1e-6))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C, ...)`` -> the denoiser's space (per-channel standardised
        with ``latent_norm="channel"``, unchanged otherwise)."""
        if self.hparams.latent_norm != "channel":
            return z
        if not self.latent_std.any():
            raise RuntimeError("latent_norm='channel' needs latent statistics: fit on a data module or call measure_latents")
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return (z - self.latent_mean.view(shape)) / self.latent_std.view(shape)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalise`."""
        if self.hparams.latent_norm != "channel":
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.latent_std.view(shape) + self.latent_mean.view(shape)

    def check_data(self, datamodule) -> None:
        """The data must be latents of the autoencoder this model decodes with."""
        data = EncodedDataModule.autoencoder_of(datamodule)
        if data is None:
            return
        mine = (self.hparams.vae, list(self.hparams.vae_overrides or []))
        if data != mine:
            raise ValueError(f"the data were encoded by {data[0]!r} {data[1]} but the model decodes with "
                             f"{mine[0]!r} {mine[1]}: set model.init_args.vae (and vae_overrides) to match")

    # --- training -----------------------------------------------------------------------

    def _rank_slice(self, draw, batch: int) -> torch.Tensor:
        """``draw(n)`` for the *global* batch, then this rank's rows. Every rank is seeded
        alike, so with data parallelism each example gets the time, noise and dropout it
        would get on one device: N devices x B reproduce 1 device x N*B (tested).
        The cost, N times the random numbers, is small next to a step."""
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        out = draw(batch * world)
        return out[rank * batch:(rank + 1) * batch] if world > 1 else out

    def training_step(self, batch, batch_idx):
        raw = batch["x"]
        if self.hparams.image_prob and torch.rand(()).item() < self.hparams.image_prob:
            raw = raw[:, :, :1]  # images: the causal VAE's first latent frame is the first frame alone
            if self.hparams.layout_from:
                batch = {**batch, "x": raw, "boxes": self._boxes(batch)[:, :1]}
        x = self.normalise(raw)
        cond = self.drop(self.condition(batch))
        weight = self.box_weight(batch["boxes"], x.shape) if self.hparams.layout_weight != 1 else None
        diffusion = self.diffusion
        t = self._rank_slice(lambda n: diffusion.sample_t(n, x.device), len(x))
        noise = self._rank_slice(lambda n: torch.randn((n, *x.shape[1:]), device=x.device, dtype=x.dtype), len(x))
        mask = None
        if self.hparams.frame_masks:  # some frames given clean; scored on the generated ones only
            from ..diffusion.frames import random_frame_masks

            uniforms = self._rank_slice(lambda n: torch.rand(n, 3, device=x.device), len(x))
            mask = random_frame_masks(uniforms.cpu(), x.shape[2], self.hparams.frame_masks).to(x.device)
        gamma = self.hparams.input_perturbation
        perturbation = gamma * self._rank_slice(
            lambda n: torch.randn((n, *x.shape[1:]), device=x.device, dtype=x.dtype), len(x)) if gamma else None
        if self.hparams.repa_from or self.hparams.probe_from or self.hparams.segment_weight:
            loss = self._aligned_loss(x, raw, cond, t, noise, perturbation, batch.get("shape_map"), weight)
        else:
            loss = self._loss(x, cond, t, noise, mask, perturbation, weight)
        # Synced only with several devices: the logged loss is then the global batch's.
        self.log("train/loss", loss, prog_bar=True, sync_dist=self._trainer is not None and self.trainer.world_size > 1)
        return loss

    def _loss(self, x, cond, t, noise, mask=None, perturbation=None, weight=None):
        """The diffusion loss; with ``frame_masks`` the denoiser also gets the mask (no
        frame given when ``mask`` is None) and is scored on the generated frames only.
        ``perturbation``, ``weight``: :meth:`Diffusion.loss`'s (``input_perturbation``, ``layout_weight``)."""
        if self.hparams.self_condition:
            use = self._rank_slice(lambda n: torch.rand(n, device=x.device), len(x)) < 0.5
            return self.diffusion.loss(self._self_conditioned_training(t, use), x, cond, t=t, noise=noise,
                                       perturbation=perturbation, weight=weight)
        if not self.hparams.frame_masks:
            return self.diffusion.loss(self.net, x, cond, t=t, noise=noise, perturbation=perturbation, weight=weight)
        from ..diffusion.frames import masked_input

        mask = torch.zeros(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device) if mask is None else mask
        net = lambda x_t, tt, c: self.net(masked_input(x_t, x, mask), tt, c)  # noqa: E731
        return self.diffusion.loss(net, x, cond, t=t, noise=noise, where=~mask[:, None, :, None, None],
                                   perturbation=perturbation, weight=weight)

    def _aligned_loss(self, x, raw, cond, t, noise, perturbation=None, shape_map=None, weight=None):
        """The diffusion loss plus REPA's (Yu et al., "Representation Alignment for
        Generation", arXiv 2410.06940): the denoiser's features, seen from the *noisy* input,
        projected and pulled (cosine similarity) towards a frozen encoder's tokens of the
        *clean* latent. ``repa_from``: the bottleneck towards the CLIP video tower's tokens
        (weight ``repa_weight``); the CLIP had to tell videos apart by their motion and shape
        to match captions, and the denoiser is taught to see those from the first steps
        instead of finding them on its own. ``probe_from``: the features at ``probe_level``
        towards the shape probe's, which must tell a small cross from a small blob.
        ``segment_weight``: the full-resolution features, through ``segment_head``, name each
        latent cell's classes in ``shape_map (B, S, T', H', W')`` (balanced soft cross-entropy)."""
        hp = self.hparams
        if hp.segment_weight and shape_map is None:
            raise ValueError("segment_weight needs each clip's shape map in the batch ('shape_map'): "
                             "set data.init_args.shape_maps: true (TextVideoDataModule)")
        towers = []  # (option, level, projection, tower, weight)
        if hp.repa_from:
            towers.append(("repa", "mid", self.repa_proj, self.repa_tower, hp.repa_weight))
        if hp.probe_from:
            towers.append(("probe", hp.probe_level, self.probe_proj, self.probe_tower, hp.probe_weight))

        @torch.no_grad()
        def tokens(clips):
            return tuple(tower().tokens(clips.float()) for *_, tower, _ in towers)

        if hp.target_memo and towers:
            if self._memo is None:
                from .memo import TargetMemo

                self.__dict__["_memo"] = TargetMemo(hp.target_memo)
            found = self._memo(raw, tokens)
        else:
            found = tokens(raw)
        targets = [(*tower[:3], target, tower[4]) for tower, target in zip(towers, found)]
        seen = {}

        levels = [level for _, level, *_ in targets] + (["last"] if hp.segment_weight else [])

        def net(x_t, tt, c):
            out, seen["features"] = self.net(x_t, tt, c, features=levels)
            return out

        loss = self.diffusion.loss(net, x, cond, t=t, noise=noise, perturbation=perturbation, weight=weight)
        logs, total = {"train/diffusion": loss.detach()}, loss
        if hp.segment_weight:
            from .segmentation import balanced_soft_ce, cell_classes

            classes = cell_classes(shape_map.float()).flatten(2).transpose(1, 2)  # (B, N, 1 + S), like the features
            features = seen["features"].pop()
            if features.shape[1] != classes.shape[1]:
                raise ValueError(f"segment_weight: the network's full-resolution features have {features.shape[1]} "
                                 f"positions but the shape map has {classes.shape[1]} latent cells: pool the maps "
                                 "to the latent grid (TextVideoDataModule(shape_maps=True) does)")
            segment = balanced_soft_ce(self.segment_head(features.float()), classes, dim=-1)
            logs["train/segment"] = segment.detach()
            total = total + hp.segment_weight * segment
        for (option, level, proj, target, weight), features in zip(targets, seen["features"]):
            if features.shape[1] != target.shape[1]:
                where = "bottleneck" if level == "mid" else f"level-{level} features"
                source = "the CLIP video tower" if option == "repa" else "the probe"
                raise ValueError(f"{option}_from: the denoiser's {where} has {features.shape[1]} positions but {source} "
                                 f"gives {target.shape[1]} tokens: give them the same (frame, row, column) grid")
            align = -F.cosine_similarity(proj(features.float()), target.float(), dim=-1).mean()
            logs[f"train/{option}"] = align.detach()
            total = total + weight * align
        self.log_dict(logs)
        return total

    def _self_conditioned_training(self, t: torch.Tensor, use: torch.Tensor):
        """Self-conditioning (Chen et al., "Analog Bits", arXiv 2208.04202): the denoiser
        also sees an estimate of ``x0``. For the examples where ``use`` is True that is its
        own estimate from a first, gradient-free pass (zeros in); for the rest, zeros. At
        sampling time it is the previous step's estimate (:meth:`_self_conditioned_sampling`),
        so each step refines the last instead of starting again from ``x_t`` alone."""
        def net(x_t, tt, c):
            prev = torch.zeros_like(x_t)
            if use.any():
                with torch.no_grad():
                    sub = {k: v[use] for k, v in c.items()} if isinstance(c, dict) else (None if c is None else c[use])
                    out = self.net(torch.cat([x_t[use], prev[use]], 1), tt[use], sub)
                    prev[use] = self.diffusion.predict(out.to(x_t), x_t[use], t[use])[0]
            return self.net(torch.cat([x_t, prev], 1), tt, c)
        return net

    def _self_conditioned_sampling(self):
        """The denoiser for a sampler: each call is fed the ``x0`` estimate of the call before
        (zeros at the first), per row, so guidance's conditional and null rows keep their own."""
        last = {}

        def net(x, tt, c):
            prev = last.get("x0")
            if prev is None or prev.shape != x.shape:
                prev = torch.zeros_like(x)
            out = self.net(torch.cat([x, prev], 1), tt, c)
            t = tt / self.diffusion.steps if self.diffusion.is_flow else tt.round().long()
            last["x0"] = self.diffusion.predict(out.to(x), x, t)[0]
            return out
        return net

    def validation_step(self, batch, batch_idx):
        # Fixed times and noise, so the validation loss is comparable across steps.
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        x = self.normalise(batch["x"])
        t = self.diffusion.sample_t(len(x), x.device, g)
        noise = torch.randn(x.shape, generator=g, device=x.device)
        self.log("val/loss", self._loss(x, self.condition(batch), t, noise), prog_bar=True)

    def on_train_start(self) -> None:
        if self.hparams.autoguide_at is not None:
            self._weak_at = self.hparams.autoguide_at * self.trainer.estimated_stepping_batches

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.hparams.autoguide_at is None or self.weak_step > 0 or self.global_step < self._weak_at:
            return
        from .callbacks import EMA

        ema = EMA.running(self.trainer, "net")
        # The weights sampling would use at this point: the average if one runs.
        self.weak_net.load_state_dict((self.net if ema is None else ema.ema.module).state_dict())
        self.weak_step.fill_(self.global_step)

    def configure_optimizers(self):
        # A pretrained text tower (text_from) may learn slower than the denoiser, or not at
        # all (text_lr_scale 0: frozen, as Imagen's T5): its words keep what CLIP taught them.
        # At scale 1 there is one group in the modules' order, as checkpoints from before the option hold.
        scale = self.hparams.text_lr_scale
        trained = [(name, p) for name, p in self.named_parameters() if not name.startswith("weak_net.")]
        is_text = {name: name.startswith("net.text.") for name, _ in trained}
        text = [p for name, p in trained if is_text[name]]
        param_groups = [{"params": [p for name, p in trained if scale == 1 or not is_text[name]]}]
        if scale == 0:
            for p in text:
                p.requires_grad_(False)
        elif text and scale != 1:
            param_groups.append({"params": text, "lr": self.hparams.lr * scale})
        opt = torch.optim.AdamW(param_groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
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

    def _given_frames(self, model, given: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
        """The denoiser with frames given: a model trained with ``frame_masks`` sees them
        clean plus the mask channel; any other model gets them *replaced*, noised to the
        current time, at every step (RePaint-style inpainting, no training)."""
        from ..diffusion.frames import masked_input

        m = mask[:, None, :, None, None]
        trained = bool(self.hparams.frame_masks)
        fixed = None if trained else torch.randn(given.shape, generator=generator, device=given.device)

        def net(x, tt, c):
            reps = len(x) // len(given)  # guidance batches [cond, null]
            g, mm = given.repeat(reps, 1, 1, 1, 1), mask.repeat(reps, 1)
            if trained:
                return model(masked_input(x, g, mm), tt, c)
            t = (tt / self.diffusion.steps) if self.diffusion.is_flow else tt.long()
            known = self.diffusion.q_sample(g, t, fixed.repeat(reps, 1, 1, 1, 1))
            return model(torch.where(m.repeat(reps, 1, 1, 1, 1), known, x), tt, c)

        return net

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...], cond=None, seed: int = 0, given: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Samples in the model's own space (pixels, or latents as :meth:`normalise` makes them). ``cond``: labels
        ``(B,)``, prompts (a list of strings) or a text condition dict. ``boxes (B, T, 4)``
        (pixels) is a layout to draw in, for a two-stage model (``layout_from``; without it the
        planner plans one, kept as ``planned_boxes``). ``kwargs`` go to
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
        boxes = kwargs.pop("boxes", None)
        if self.hparams.layout_from and isinstance(cond, dict) and "layout" not in cond:
            # Two stages: the planner draws the boxes for the prompt (same seed, same path)
            if boxes is None:
                planner, vae = self.planner, self.vae
                size = (vae.latent_frames(planner.net.frames), planner.hparams.height // vae.space_factor,
                        planner.hparams.width // vae.space_factor)
                if tuple(shape[2:]) != size:
                    raise ValueError(f"the layout planner plans {planner.net.frames} frames at "
                                     f"{planner.hparams.height}x{planner.hparams.width} (latents {size}), not latents "
                                     f"{tuple(shape[2:])}: sample that size, or give boxes= for yours")
                boxes = planner.plan(cond, seed)
            boxes = boxes.to(self.device)
            cond = {**cond, "layout": self.layout_maps(boxes, shape)}
            self.planned_boxes = boxes  # the plan, to draw beside the video
        elif boxes is not None:
            raise ValueError("boxes= is for a two-stage model (layout_from), that draws in given boxes")
        kwargs.setdefault("sampler", "euler" if self.diffusion.is_flow else "ddim")
        kwargs.setdefault("clip", self.hparams.clip)
        if kwargs.get("autoguidance"):
            kwargs["weak"] = self._weak_model(mask)
        null = self.null(shape[0], like=cond if isinstance(cond, dict) else None) if cond is not None else None
        model = self._self_conditioned_sampling() if self.hparams.self_condition else self.net
        if mask is not None:
            if given is None or tuple(given.shape) != tuple(shape) or tuple(mask.shape) != (shape[0], shape[2]):
                raise ValueError(f"frames given by `given` {tuple(given.shape) if given is not None else None} and "
                                 f"`mask` {tuple(mask.shape)} must be {tuple(shape)} and {(shape[0], shape[2])}")
            given, mask = given.to(self.device), mask.to(self.device).bool()
            model = self._given_frames(model, given, mask, g)
        elif self.hparams.frame_masks:  # nothing given: the mask channel says so
            from ..diffusion.frames import masked_input

            none = torch.zeros(shape[0], shape[2], dtype=torch.bool, device=self.device)
            model = lambda x, tt, c: self.net(masked_input(x, x, none.repeat(len(x) // shape[0], 1)), tt, c)  # noqa: E731
        out = sample(self.diffusion, model, shape, cond, null_cond=null, generator=g, device=self.device, **kwargs)
        if mask is not None:  # the given frames, exactly
            out = torch.where(mask[:, None, :, None, None], given, out)
        self.train(was_training)
        return out

    def _weak_model(self, mask):
        """The weak network for autoguidance, or a clear error why there is none."""
        if self.hparams.autoguide_at is None:
            raise ValueError("autoguidance needs a weak model: train with autoguide_at (e.g. 0.5) to keep one")
        if int(self.weak_step) == 0:
            raise ValueError("autoguidance: this model's weak copy was never taken (training stopped before "
                             f"autoguide_at={self.hparams.autoguide_at} of its steps)")
        if mask is not None:
            raise ValueError("autoguidance is for plain generation, not with given frames (mask)")
        return self.weak_net

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Videos ``(B, 3, T, H, W)`` -> latents in the denoiser's space (the VAE's, scaled, normalised)."""
        return self.normalise(self.vae.encode(video.to(self.device)) * self.vae.scale_factor)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """The inverse of :meth:`encode`: latents -> videos in [-1, 1] (cropped to ``frames``)."""
        return self.vae.decode(self.denormalise(x) / self.vae.scale_factor, frames).clamp(-1, 1)

    @torch.no_grad()
    def generate(self, shape: tuple[int, ...], cond=None, frames: int | None = None,
                 seed: int = 0, **kwargs) -> torch.Tensor:
        """Samples as data: pixels as they are, latents decoded by the VAE (to ``frames``).
        ``kwargs`` go to :meth:`sample` (given frames, SDEdit start, sampler options)."""
        x = self.sample(shape, cond, seed, **kwargs)
        return x.clamp(-1, 1) if self.vae is None else self.decode(x, frames)


def net_channels(net: nn.Module) -> int:
    """The number of data channels a denoiser takes (``in_channels`` of the DiT and U-Net)."""
    channels = getattr(net, "in_channels", None)
    if channels is None:
        raise ValueError(f"{type(net).__name__} has no in_channels attribute: latent_norm='channel' needs it")
    return channels


class EncodedDataModule(pl.LightningDataModule):
    """What every data module of pre-encoded latents shares: the cached autoencoder named by
    ``hparams.vae`` is trained in ``prepare_data`` (once per machine, before DDP ranks
    start, so they never train it concurrently), and ``train_set`` / ``val_set`` are served
    shuffled (seeded) and in order."""

    def prepare_data(self) -> None:
        from .cached import load_or_train_vae

        load_or_train_vae(self.hparams.vae, *(self.hparams.vae_overrides or []))

    @staticmethod
    def autoencoder_of(datamodule) -> tuple[str, list[str]] | None:
        """``(vae, vae_overrides)``: the cached autoencoder a data module's latents come from,
        or None for data that are not latents."""
        hp = getattr(datamodule, "hparams", {})
        return (hp["vae"], list(hp.get("vae_overrides") or [])) if "vae" in hp else None

    @property
    def train_latents(self) -> torch.Tensor:
        """All training latents ``(N, C, T, H, W)`` (for per-channel statistics)."""
        return self.train_set.tensors[0] if isinstance(self.train_set, TensorDataset) else self.train_set.latents

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
