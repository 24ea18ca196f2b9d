"""Training on a folder of your own videos: on the fly, or from precomputed latent shards.

Two data modules, one batch format, so one config trains either way (notebook 10):

* :class:`VideoFolderDataModule` decodes clips (:class:`~sora_edu.data.video_folder.VideoFolder`)
  every step; without ``vae`` it serves pixels ``{"x": (B, 3, T, H, W)}`` (to train the
  autoencoder), with ``vae`` it encodes them on the device, so every step pays for the VAE.
* :class:`LatentShardDataModule` reads what ``sora-edu encode`` wrote once
  (:func:`encode_folder`): the DiT step is then the DiT alone (fast-DiT's "extract features
  first", at the scale of a folder).

Text batches: ``{"x": latents, "ids", "mask": (B, L)}``. Batches come from a
:class:`~sora_edu.data.buckets.BucketBatchSampler` (one bucket per batch, each global
batch split over data-parallel ranks) and the loader's ``state_dict`` records how far into
the epoch a checkpoint was taken, so ``--ckpt_path`` resumes on the very next batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.buckets import BucketBatchSampler
from ..data.video_folder import VideoFolder


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`BucketBatchSampler` that Lightning checkpoints: its
    ``state_dict`` is how far into the epoch training got (the trainer's count of batches
    processed, not what the loader prefetched), and ``load_state_dict`` makes the next
    epoch iterated start after those batches, so ``--ckpt_path`` resumes on the very next one."""

    def __init__(self, *args, trainer=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trainer = trainer

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        return self.batch_sampler.state(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self.batch_sampler.resume(state_dict)


class _Batches(pl.LightningDataModule):
    """Bucketed, rank-aware, resumable batches over ``self.train_set`` (which has ``bucket_of``)."""

    def train_dataloader(self) -> DataLoader:
        hp, trainer = self.hparams, self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = BucketBatchSampler(self.train_set.bucket_of, hp.batch_size, shuffle=True, seed=hp.seed,
                                     num_replicas=world, rank=rank, on_epoch=getattr(self.train_set, "set_epoch", None))
        # Its own generator: creating the iterator then draws nothing from the global RNG.
        return ResumableLoader(self.train_set, batch_sampler=sampler, num_workers=hp.num_workers,
                               collate_fn=self.collate, generator=torch.Generator().manual_seed(hp.seed), trainer=trainer)

    def collate(self, items: Sequence[dict]) -> dict:
        batch = {"x": torch.stack([it["x"] for it in items]), "index": torch.tensor([it["index"] for it in items])}
        if self.hparams.get("text", True):
            if getattr(self, "_tok", None) is None:
                from ..models.text import WordTokenizer

                self._tok = WordTokenizer.load_or_world(self.hparams.get("tokenizer"))
            batch["ids"], batch["mask"] = self._tok.encode([it["caption"] for it in items], max_len=self.hparams.max_len)
        return batch


class _Clips(Dataset):
    """A :class:`VideoFolder` whose items are ``{"x", "caption", "index"}`` at one epoch."""

    def __init__(self, folder: VideoFolder) -> None:
        self.folder, self.bucket_of = folder, folder.bucket_of

    def __len__(self) -> int:
        return len(self.folder)

    def set_epoch(self, epoch: int) -> None:
        self.folder.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        item = self.folder[i]
        return {"x": item["video"], "caption": item["caption"], "index": item["index"]}


class VideoFolderDataModule(_Batches):
    """Clips decoded from a folder every step (see :mod:`sora_edu.data.video_folder`).

    Args:
        root: the video folder.
        frames, stride, buckets, resize, caption_field, random_clip: as :class:`VideoFolder`.
        batch_size: per device; num_workers: decoding processes.
        vae, vae_overrides: encode batches with this cached autoencoder (for a DiT), or None
            (serve pixels, to train the autoencoder itself).
        text: also tokenise captions (``ids``, ``mask``); tokenizer: a vocabulary file, or
            None for the Shapes world's words; max_len: caption tokens.
        seed: batch order and clip starts.
    """

    def __init__(self, root: str, frames: int = 16, stride: int = 1, buckets: list[list[int]] | None = None,
                 resize: str = "crop", caption_field: str = "caption", random_clip: bool = True, batch_size: int = 8,
                 num_workers: int = 0, vae: str | None = None, vae_overrides: list[str] | None = None,
                 text: bool = True, tokenizer: str | None = None, max_len: int = 24, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = None

    def prepare_data(self) -> None:
        if self.hparams.vae is not None:
            from .cached import load_or_train_vae

            load_or_train_vae(self.hparams.vae, *(self.hparams.vae_overrides or []))

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        hp = self.hparams
        self.folder = VideoFolder(hp.root, hp.frames, hp.stride, [tuple(b) for b in hp.buckets] if hp.buckets else None,
                                  hp.resize, hp.caption_field, hp.random_clip, hp.seed)
        print(self.folder.report())
        self.train_set = _Clips(self.folder)
        if hp.vae is not None:
            from .cached import load_or_train_vae

            self.vae = load_or_train_vae(hp.vae, *(hp.vae_overrides or []), verbose=False).eval().requires_grad_(False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.vae is not None:  # on the fly: the autoencoder runs every step
            self.vae.to(batch["x"].device)
            with torch.no_grad():
                batch["x"] = self.vae.encode(batch["x"]) * self.vae.scale_factor
        return batch


# --- latent shards ------------------------------------------------------------------------

MANIFEST = "manifest.json"


def _settings(vae_key: str, folder: VideoFolder, caption_field: str) -> dict:
    return {"vae": vae_key, "frames": folder.frames, "stride": folder.stride, "buckets": folder.buckets,
            "resize": folder.resize, "caption_field": caption_field, "seed": folder.seed,
            "videos": [i.path.relative_to(folder.root).as_posix() for i in folder.items]}


@torch.no_grad()
def encode_folder(vae, vae_key: str, root: str | Path, out: str | Path, frames: int = 16, stride: int = 1,
                  buckets: Sequence[Sequence[int]] | None = None, resize: str = "crop", caption_field: str = "caption",
                  shard_size: int = 256, batch_size: int = 16, seed: int = 0, max_shards: int | None = None) -> dict:
    """Encode every usable video of ``root`` once into ``out/shard_BB_KKKKK.safetensors``.

    Each shard holds ``latents (N, C, T', H', W')`` of one bucket (scaled by the VAE's
    ``scale_factor``, the clip an epoch-0 :class:`VideoFolder` gives) and ``index (N,)``;
    its metadata holds the captions. ``manifest.json`` (rewritten atomically after every
    shard) lists the shards done, so an interrupted encode resumes where it stopped (same
    settings required); ``tokenizer.json`` is the captions' vocabulary. ``max_shards``
    stops after that many new shards (to show resuming). Returns the manifest."""
    from safetensors.torch import save
    from tqdm.auto import tqdm

    from ..models.text import WordTokenizer
    from ..viz import write_atomic

    out = Path(out)
    folder = VideoFolder(root, frames, stride, [tuple(b) for b in buckets] if buckets else None, resize, caption_field,
                         random_clip=True, seed=seed)
    settings = _settings(vae_key, folder, caption_field)
    manifest = {"settings": settings, "shards": {}, "skipped": folder.skipped}
    if (out / MANIFEST).exists():
        previous = json.loads((out / MANIFEST).read_text())
        if previous["settings"] != json.loads(json.dumps(settings)):
            raise ValueError(f"{out} holds shards encoded with other settings (VAE, clip size, buckets or videos); "
                             f"choose another --out or delete it")
        manifest["shards"] = previous["shards"]
    jobs = []
    for b in sorted(set(folder.bucket_of)):
        items = [i for i, bb in enumerate(folder.bucket_of) if bb == b]
        jobs += [(f"shard_{b:02d}_{k // shard_size:05d}.safetensors", items[k:k + shard_size])
                 for k in range(0, len(items), shard_size)]
    todo = [(name, items) for name, items in jobs if name not in manifest["shards"] or not (out / name).exists()]
    done_now = 0
    for name, items in tqdm(todo, desc="encoding shards", unit="shard"):
        if max_shards is not None and done_now >= max_shards:
            break
        latents = []
        for k in range(0, len(items), batch_size):
            clips = torch.stack([folder.clip(i) for i in items[k:k + batch_size]])
            latents.append(vae.encode(clips) * vae.scale_factor)
        captions = [folder.items[i].caption for i in items]
        data = save({"latents": torch.cat(latents).contiguous(), "index": torch.tensor(items)},
                    metadata={"captions": json.dumps(captions)})
        write_atomic(out / name, data)
        manifest["shards"][name] = len(items)
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
        done_now += 1
    complete = len(manifest["shards"]) == len(jobs)
    if complete:
        WordTokenizer.from_texts(i.caption for i in folder.items).save(out / "tokenizer.json")
    manifest["complete"] = complete
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


class LatentShards(Dataset):
    """The items of a shard folder, in the video folder's order: ``{"x", "caption", "index"}``."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        path = Path(path)
        if not (path / MANIFEST).exists():
            raise FileNotFoundError(f"no {MANIFEST} in {str(path)!r}: write shards with `sora-edu encode`")
        manifest = json.loads((path / MANIFEST).read_text())
        if not manifest.get("complete"):
            raise ValueError(f"{path} is only partly encoded: run the same `sora-edu encode` again to finish it")
        rows = []
        for name in sorted(manifest["shards"]):
            with safe_open(str(path / name), framework="pt") as f:
                latents, index = f.get_tensor("latents"), f.get_tensor("index")
                captions = json.loads(f.metadata()["captions"])
            rows += [(int(i), latents[k], captions[k], tuple(latents.shape[1:])) for k, i in enumerate(index)]
        rows.sort(key=lambda r: r[0])
        self.index = [r[0] for r in rows]
        self.latents = [r[1] for r in rows]
        self.captions = [r[2] for r in rows]
        shapes = sorted({r[3] for r in rows})
        self.bucket_of = [shapes.index(r[3]) for r in rows]
        self.settings = manifest["settings"]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.latents[i], "caption": self.captions[i], "index": self.index[i]}


class LatentShardDataModule(_Batches):
    """Latents read from ``sora-edu encode`` shards: the DiT trains without running the VAE.

    Args:
        shards: the shard folder. vae, vae_overrides: the autoencoder the shards were
            encoded with (checked against the manifest; the model decodes with it).
        batch_size: per device; num_workers: loader processes (0 is right: it is memory).
        tokenizer, max_len: as :class:`VideoFolderDataModule`. seed: batch order.
    """

    def __init__(self, shards: str, vae: str = "vae_t2v", vae_overrides: list[str] | None = None, batch_size: int = 64,
                 num_workers: int = 0, tokenizer: str | None = None, max_len: int = 24, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = None

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from .cached import cached_path, load_or_train_vae

        hp = self.hparams
        self.train_set = LatentShards(hp.shards)
        key = cached_path(hp.vae, *(hp.vae_overrides or [])).name
        if self.train_set.settings["vae"] != key:
            raise ValueError(f"the shards in {hp.shards} were encoded by VAE {self.train_set.settings['vae']!r}, "
                             f"but vae={hp.vae!r} {hp.vae_overrides or []} is {key!r}")
        self.vae = load_or_train_vae(hp.vae, *(hp.vae_overrides or []), verbose=False).eval().requires_grad_(False)

    @property
    def train_latents(self) -> torch.Tensor:
        """Every latent value by channel, ``(1, C, N, 1, 1)`` (buckets differ in shape)."""
        return torch.cat([x.flatten(1) for x in self.train_set.latents], 1)[None, :, :, None, None]


__all__ = ["LatentShardDataModule", "LatentShards", "ResumableLoader", "VideoFolderDataModule", "encode_folder"]
