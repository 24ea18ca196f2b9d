"""Text-to-video on the Shapes world: the data, the held-out combinations, the evaluation.

The world for text-to-video (:data:`T2V_WORLD`) has one object per video, no walls or
camera pans, 4 shapes x 6 colours x 2 sizes x 5 motions x 5 backgrounds = 1200 prompts.
A few (shape, colour, motion) combinations (:data:`HELD_OUT`) never appear in training,
whatever the size and background, so a model that writes them has *composed* attributes it
only saw apart: the compositional generalisation the Sora report claims at scale.

Captions are the world's detailed captions ("a small red circle moves left across a navy
background"), the recaptioned kind Sora trains on; ``captions="alt_text"`` trains on the
short, noisy alt-text instead (notebook 08's experiment).

Layouts: video ``(B, 3, T, H, W)`` in [-1, 1]; latents ``(B, z, T', H', W')`` scaled by the
VAE's ``scale_factor``; batches ``{"x": latents, "ids": (B, L), "mask": (B, L)}``.
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ..data.worlds import BACKGROUNDS, ShapesWorld, WorldConfig
from ..eval.world_score import adherence
from .diffusion import EncodedDataModule

T2V_WORLD = WorldConfig(
    shapes=("circle", "square", "triangle", "cross"),
    colours=("red", "green", "blue", "yellow", "purple", "white"),
    sizes=("small", "large"),
    motions=("left", "right", "up", "down", "still"),
    backgrounds=tuple(BACKGROUNDS),
    min_objects=1, max_objects=1, p_occluder=0.0, p_pan=0.0,
)
# The scorer judges among the world's own values (a closed-set judge, as any classifier is).
T2V_VOCABULARY = {"shapes": T2V_WORLD.shapes, "colours": T2V_WORLD.colours, "motions": T2V_WORLD.motions}
# (shape, colour, motion) never trained on; every value still appears in other combinations.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("circle", "red", "left"), ("circle", "yellow", "down"),
    ("square", "green", "right"), ("square", "purple", "still"),
    ("triangle", "blue", "up"), ("triangle", "white", "left"),
    ("cross", "yellow", "right"), ("cross", "red", "down"),
)
_ENDLESS = 10**9  # the world's index space; only the first few thousand scenes are ever drawn


_OBJECT_ATTRIBUTES = ("shape", "colour", "size", "motion")


def asked(scene) -> dict:
    """The attributes a one-object scene's detailed caption names."""
    o = scene.objects[0]
    return {**{k: getattr(o, k) for k in _OBJECT_ATTRIBUTES}, "background": scene.background}


def is_held_out(attributes: dict) -> bool:
    return (attributes["shape"], attributes["colour"], attributes["motion"]) in HELD_OUT


def _split(world: ShapesWorld, n: int, held_out: bool) -> list[tuple[int, object]]:
    """The first ``n`` (index, scene) pairs of ``world`` whose combination is (not) held out,
    each scene drawn once and not rendered."""
    out, i = [], 0
    while len(out) < n:
        scene = world.scene(i)[0]
        if is_held_out(asked(scene)) == held_out:
            out.append((i, scene))
        i += 1
    return out


def scene_indices(world: ShapesWorld, n: int, held_out: bool) -> list[int]:
    """The first ``n`` scene indices of ``world`` whose combination is (not) held out.
    Scenes are drawn without rendering, so this is cheap."""
    return [i for i, _ in _split(world, n, held_out)]


def training_scenes(n: int, seed: int = 0, frames: int = 16, height: int = 64, width: int = 64) -> list:
    """The first ``n`` training-split scenes of the world of ``seed`` (drawn, not rendered):
    the clips :class:`TextVideoDataModule` encodes, in its order."""
    world = ShapesWorld(_ENDLESS, frames, height, width, seed, T2V_WORLD)
    return [scene for _, scene in _split(world, n, held_out=False)]


def scene_boxes(scenes: Sequence) -> torch.Tensor:
    """One-object scenes -> their object's box in every frame, ``(B, T, 4)`` x0, y0, x1, y1 px."""
    import numpy as np

    return torch.from_numpy(np.stack([s.objects[0].box for s in scenes])).float()


def asked_in(captions: Sequence[str]) -> list[dict]:
    """One-object detailed captions -> the attributes each names (:func:`asked`'s keys)."""
    from ..data.worlds import parse_caption

    out = []
    for caption in captions:
        parsed = parse_caption(caption)
        if len(parsed["objects"]) != 1:
            raise ValueError(f"expected a one-object caption, got {caption!r}")
        o = parsed["objects"][0]
        out.append({**{k: o[k] for k in _OBJECT_ATTRIBUTES}, "background": parsed["background"]})
    return out


def held_out_prompts(n: int, frames: int = 16, height: int = 64, width: int = 64, seed: int = 0) -> list:
    """``n`` scenes with held-out combinations (cycling through :data:`HELD_OUT`, random size,
    background and path): the ground truth of held-out prompts."""
    scenes = []
    for k in range(n):
        shape, colour, motion = HELD_OUT[k % len(HELD_OUT)]
        world = ShapesWorld(_ENDLESS, frames, height, width, seed, T2V_WORLD, shape=shape, colour=colour, motion=motion)
        scenes.append(world.scene(k)[0])
    return scenes


def evaluation_prompts(n: int, split: str = "seen", frames: int = 16, height: int = 64, width: int = 64,
                       seed: int = 20_000) -> tuple[list[str], list[dict]]:
    """``n`` prompts (detailed captions) and the attributes each asks for, from combinations
    seen in training (``split="seen"``, a seed no training set uses) or held out."""
    if split == "seen":
        scenes = training_scenes(n, seed, frames, height, width)  # the seen split of a world no training set uses
    elif split == "held_out":
        scenes = held_out_prompts(n, frames, height, width, seed)
    else:
        raise ValueError(f"split must be 'seen' or 'held_out', got {split!r}")
    return [s.caption() for s in scenes], [asked(s) for s in scenes]


def complete_prompt(prompt: str, seed: int = 0, frames: int = 16, height: int = 64, width: int = 64) -> tuple[str, dict]:
    """A short prompt ("a red circle moves left") -> a detailed caption of the training
    grammar, and the attributes the *prompt* named (what adherence is scored on).

    Attributes the prompt leaves out (size, background, ...) are drawn at random (seeded),
    so the model sees captions like those it was trained on. This is prompt upsampling by
    rule; notebook 08 learns it. Words the world does not know are ignored (and listed in
    the error when nothing known is left); naming a value outside the text-to-video world
    (a diamond, a bounce) raises.
    """
    from ..data.worlds import COLOURS, MOTIONS, SHAPES, SIZES
    from ..models.text import words

    said = words(prompt)
    synonyms = {"big": "large", "little": "small", "tiny": "small", "grey": "gray", "stays": "still",
                "bounces": "bounce", "bouncing": "bounce"}
    said = [synonyms.get(w, w) for w in said]
    named: dict[str, str] = {}
    for i, w in enumerate(said):
        if w in BACKGROUNDS and (w not in COLOURS or said[i + 1:i + 2] == ["background"]):
            key = "background"  # "white" is a colour; "a navy background" names a background
        elif w in COLOURS:
            key = "colour"
        elif w in SHAPES:
            key = "shape"
        elif w in SIZES:
            key = "size"
        elif w in MOTIONS:
            key = "motion"
        else:
            continue
        named.setdefault(key, w)
    if not named:
        raise ValueError(f"the prompt {prompt!r} names nothing this world knows: say a shape ({', '.join(T2V_WORLD.shapes)}), "
                         f"a colour ({', '.join(T2V_WORLD.colours)}), a motion ({', '.join(T2V_WORLD.motions)}), ...")
    allowed = {"shape": T2V_WORLD.shapes, "colour": T2V_WORLD.colours, "size": T2V_WORLD.sizes,
               "motion": T2V_WORLD.motions, "background": T2V_WORLD.backgrounds}
    for key, value in named.items():
        if value not in allowed[key]:
            raise ValueError(f"the text-to-video world has no {key} {value!r}; it knows {', '.join(allowed[key])}")
    world = ShapesWorld(_ENDLESS, frames, height, width, seed, T2V_WORLD, **named)
    scene = world.scene(0)[0]
    return scene.caption(), named


@functools.lru_cache(maxsize=4)
def world_prompts(frames: int = 16, height: int = 64, width: int = 64) -> tuple[tuple[str, ...], tuple[dict, ...]]:
    """Every detailed caption of the text-to-video world (1200) and its attributes."""
    import itertools

    captions, attributes = [], []
    w = T2V_WORLD
    for shape, colour, size, motion, background in itertools.product(w.shapes, w.colours, w.sizes, w.motions,
                                                                     w.backgrounds):
        a = {"shape": shape, "colour": colour, "size": size, "motion": motion, "background": background}
        captions.append(ShapesWorld(1, frames, height, width, 0, T2V_WORLD, **a).scene(0)[0].caption())
        attributes.append(a)
    return tuple(captions), tuple(attributes)


@torch.no_grad()
def clip_adherence(clip, latents: torch.Tensor, wanted: Sequence[dict], batch_size: int = 256) -> dict:
    """The retrieval judge: each video's attributes are those of the world caption its CLIP
    embedding matches best (of all 1200); scored against ``wanted`` like the world-truth
    scorer (per attribute, and ``"all"``). ``latents``: scaled VAE latents ``(B, z, T', H', W')``."""
    from ..models.text import WordTokenizer

    captions, attributes = world_prompts()
    ids, mask = WordTokenizer.for_world().encode(list(captions), max_len=24)
    device = next(clip.parameters()).device
    text = torch.cat([clip.encode_text(i.to(device), m.to(device)) for i, m in zip(ids.split(batch_size), mask.split(batch_size))])
    video = torch.cat([clip.encode_video(x.to(device)) for x in latents.split(batch_size)])
    best = (video @ text.T).argmax(1).tolist()
    rows = [{k: attributes[j][k] == v for k, v in a.items()} for j, a in zip(best, wanted)]
    for r in rows:
        r["all"] = all(r.values())
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


class _Latents(Dataset):
    def __init__(self, latents: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 shape_maps: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> None:
        self.latents, self.ids, self.mask, self.shape_maps, self.boxes = latents, ids, mask, shape_maps, boxes

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int):
        row = {"x": self.latents[i], "ids": self.ids[i], "mask": self.mask[i]}
        if self.shape_maps is not None:
            row["shape_map"] = self.shape_maps[i]
        if self.boxes is not None:
            row["boxes"] = self.boxes[i]
        return row


class TextVideoDataModule(EncodedDataModule):
    """Captioned one-object Shapes-world videos, encoded once by a cached autoencoder.

    The latents are cached too (``SORA_EDU_CACHE/latents/text_video/KEY-nN``, safetensors,
    written atomically), so the DiT, CLIP and every notebook encode the same videos once:
    fast-DiT's "latents once, not every step", one level up.

    Args:
        vae, vae_overrides: the cached autoencoder config (trained in ``prepare_data`` if absent).
        num_train, num_val: videos rendered and encoded (held-out combinations never among them).
        frames, height, width: video size.
        batch_size: training batch.
        captions: ``"detailed"`` (ground truth), ``"alt_text"`` (short, noisy), or
            ``"recaptioned"``: the ``captioner`` config's captions (:mod:`sora_edu.train.captioning`,
            cached) for a ``recaption_mix`` fraction of the videos, alt-text for the rest
            (DALL-E 3 used 95 % recaptions).
        captioner, captioner_overrides: the cached captioner config that recaptions.
        max_len: token length of the captions (the grammar's longest one-object caption is ~16).
        seed: world seed of the training set (validation uses ``seed + 10_000``).
        oversample: ``{"small cross": 3.0}`` draws the training clips whose caption has every
            word of a key that many times as often (with replacement; keys multiply). What
            each caption teaches is unchanged, only how often it is taught (how much of the
            model it gets): unlike a loss weight that depends on the target, it does not move
            the optimum of any caption's model. Measured on ``t2v_unet``: not a lever there.
        shape_maps: batches also carry ``"shape_map" (B, S, T', H', W')``: the renderer's
            per-pixel shape coverage averaged over each latent cell (what a denoiser's
            ``segment_weight`` learns from); rendered once and cached beside the latents.
        layouts: batches also carry ``"boxes" (B, T, 4)``: the object's box in every frame
            (pixels; the scenes are drawn again, not rendered), what a two-stage model's
            video stage is conditioned on (``layout_from``, :mod:`sora_edu.models.layout`).
        encode_bf16: encode under bf16 autocast, as an autoencoder trained under
            ``bf16-mixed`` ran in training: ~40 % faster on a CPU (0.47 vs 0.81 s per 64
            clips); the latents differ from fp32's by ~0.5 % of their range, so they are
            cached apart.
    """

    def __init__(self, vae: str = "vae_t2v", vae_overrides: list[str] | None = None, num_train: int = 8000,
                 num_val: int = 256, frames: int = 16, height: int = 64, width: int = 64, batch_size: int = 64,
                 captions: str = "detailed", max_len: int = 24, seed: int = 0, captioner: str = "captioner",
                 captioner_overrides: list[str] | None = None, recaption_mix: float = 1.0,
                 oversample: dict[str, float] | None = None, shape_maps: bool = False, layouts: bool = False,
                 encode_bf16: bool = False) -> None:
        super().__init__()
        if captions not in ("detailed", "alt_text", "recaptioned"):
            raise ValueError(f"captions must be 'detailed', 'alt_text' or 'recaptioned', got {captions!r}")
        if not 0.0 <= recaption_mix <= 1.0:
            raise ValueError(f"recaption_mix must be in [0, 1], got {recaption_mix}")
        if any(factor <= 0 for factor in (oversample or {}).values()):
            raise ValueError(f"oversample factors must be > 0, got {oversample}")
        self.save_hyperparameters()
        self.example_prompts = evaluation_prompts(4, "seen", frames, height, width)[0] + \
            evaluation_prompts(4, "held_out", frames, height, width)[0]

    @torch.no_grad()
    def _encode(self, n: int, seed: int) -> _Latents:
        """Render and encode ``n`` training-split videos, or load them from the latent cache
        (keyed by the VAE's cache key and everything that changes the videos)."""
        import json

        from safetensors.torch import load_file, save

        from ..cache import cache_dir, config_hash
        from ..models.text import WordTokenizer
        from ..viz import write_atomic
        from .cached import cached_path

        hp = self.hparams
        videos = {"vae": cached_path(hp.vae, *(hp.vae_overrides or [])).name, "seed": seed,
                  "size": [hp.frames, hp.height, hp.width], "world": repr(T2V_WORLD), "held_out": HELD_OUT}
        key = config_hash({**videos, "encode": "bf16"} if hp.encode_bf16 else videos)  # fp32 keys as before
        root = cache_dir() / "latents" / "text_video"
        folder = root / f"{key}-n{n}"
        # The first n training scenes are a prefix of the first N > n, so a larger cached set
        # serves a smaller one (the captioner's 2000 videos are the text-to-video model's first 2000).
        cached = ((int(f.name.rsplit("-n", 1)[1]), f) for f in root.glob(f"{key}-n*") if (f / "captions.json").exists())
        larger = sorted(c for c in cached if c[0] >= n)
        source = folder  # where the latents are read from; their shape maps live beside them
        scenes = None  # the drawn scenes, when this call renders them (their boxes are the layouts)
        if larger:
            n_found, found = larger[0]
            source = found
            latents = load_file(str(found / "latents.safetensors"))["latents"][:n].contiguous()
            captions = {k: v[:n] for k, v in json.loads((found / "captions.json").read_text()).items()}
            if n_found == n:  # else recaptions of the n go to their own folder (write_atomic makes it)
                folder = found
        else:
            # with shape_maps the maps come from the same render: the scenes are drawn once
            world, indices = self._scenes(n, seed, hp.shape_maps)
            parts, maps, captions, scenes = [], [], {"detailed": [], "alt_text": []}, []
            for start in range(0, n, 64):
                samples = world.samples(indices[start:start + 64])
                scenes += [s.scene for s in samples]
                with torch.autocast(self.vae.scale_factor.device.type, dtype=torch.bfloat16, enabled=hp.encode_bf16):
                    z = self.vae.encode(torch.stack([s.video for s in samples])).float()
                parts.append(z * self.vae.scale_factor)
                if hp.shape_maps:
                    maps.append(self._pooled_maps(samples))
                captions["detailed"] += [s.caption for s in samples]
                captions["alt_text"] += [s.alt_text for s in samples]
            latents = torch.cat(parts).contiguous()
            write_atomic(folder / "latents.safetensors", save({"latents": latents}))
            if maps:
                write_atomic(folder / "shape_maps.safetensors", save({"shape_maps": torch.cat(maps).contiguous()}))
            write_atomic(folder / "captions.json", json.dumps(captions).encode())  # written last: the marker
        if hp.captions == "recaptioned" and seed == hp.seed:  # the training set is relabelled
            texts = self._recaptioned(latents, captions, folder)
        else:  # validation is scored on ground truth when recaptioning
            texts = captions["detailed" if hp.captions == "recaptioned" else hp.captions]
        ids, mask = WordTokenizer.for_world().encode(texts, max_len=hp.max_len)
        maps = self._shape_maps(n, seed, source) if hp.shape_maps else None
        boxes = None
        if hp.layouts:
            boxes = scene_boxes(scenes or training_scenes(n, seed, hp.frames, hp.height, hp.width))
        return _Latents(latents, ids, mask, maps, boxes)

    def _scenes(self, n: int, seed: int, shape_maps: bool = False) -> tuple[ShapesWorld, list[int]]:
        """The world of ``seed`` and its first ``n`` training-split scenes: the cached clips' order."""
        hp = self.hparams
        world = ShapesWorld(_ENDLESS, hp.frames, hp.height, hp.width, seed, T2V_WORLD, shape_maps=shape_maps)
        return world, scene_indices(world, n, held_out=False)

    def _pooled_maps(self, samples) -> torch.Tensor:
        """Rendered samples' shape maps averaged over each latent cell, ``(B, S, T', H', W')`` bf16."""
        return self.vae.pool_to_latent(torch.stack([s.shape_map for s in samples])).to(torch.bfloat16)

    @torch.no_grad()
    def _shape_maps(self, n: int, seed: int, folder) -> torch.Tensor:
        """``(n, S, T', H', W')`` bf16: the first ``n`` clips' shape maps pooled to the latent
        grid, from ``folder`` (where their latents are cached; written there when they were
        encoded with ``shape_maps``) or rendered now (no encoding: the same scenes drawn
        again, ~4 ms a clip) and cached there."""
        from safetensors.torch import load_file, save

        from ..viz import write_atomic

        path = folder / "shape_maps.safetensors"
        if path.exists():
            maps = load_file(str(path))["shape_maps"]
            if len(maps) >= n:
                return maps[:n].contiguous()
        world, indices = self._scenes(n, seed, shape_maps=True)
        maps = torch.cat([self._pooled_maps(world.samples(indices[i:i + 64])) for i in range(0, n, 64)]).contiguous()
        write_atomic(path, save({"shape_maps": maps}))
        return maps

    def _recaptioned(self, latents: torch.Tensor, captions: dict, folder) -> list[str]:
        """The captioner's captions for a ``recaption_mix`` fraction (seeded per video), alt-text for the rest."""
        import numpy as np

        from .captioning import recaption
        from .cached import cached_path, load_or_train

        hp = self.hparams
        overrides = hp.captioner_overrides or []
        captioner = lambda: load_or_train(hp.captioner, *overrides, verbose=False)  # noqa: E731 -- loaded only if not cached
        recaptions = recaption(captioner, latents, str(folder / f"recaptions_{cached_path(hp.captioner, *overrides).name}.json"))
        self.recaptions = recaptions
        pick = np.random.default_rng([hp.seed, 95]).random(len(latents)) < hp.recaption_mix
        return [r if k else a for r, a, k in zip(recaptions, captions["alt_text"], pick)]

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from .cached import load_or_train_vae

        hp = self.hparams
        self.vae = load_or_train_vae(hp.vae, *(hp.vae_overrides or []), verbose=False).eval()
        self.train_set = self._encode(hp.num_train, hp.seed)
        self.val_set = self._encode(hp.num_val, hp.seed + 10_000)

    def sampling_weights(self) -> torch.Tensor:
        """``(num_train,)``: how often each training clip is drawn, relative to 1 (``oversample``)."""
        from ..models.text import WordTokenizer, words

        phrases = [(set(words(phrase)), factor) for phrase, factor in (self.hparams.oversample or {}).items()]
        weights = torch.ones(len(self.train_set), dtype=torch.float64)
        for i, caption in enumerate(WordTokenizer.for_world().decode(self.train_set.ids)):
            said = set(words(caption))
            for wanted, factor in phrases:
                if wanted <= said:
                    weights[i] *= factor
        return weights

    def train_dataloader(self) -> DataLoader:
        if not self.hparams.oversample:
            return super().train_dataloader()
        g = torch.Generator().manual_seed(self.hparams.seed)
        weights = self.sampling_weights()
        sampler = WeightedRandomSampler(weights, len(weights), replacement=True, generator=g)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True)


@torch.no_grad()
def evaluate_text_to_video(module, n: int = 64, frames: int = 16, height: int = 64, width: int = 64,
                           splits: Sequence[str] = ("seen", "held_out"), batch_size: int = 32, seed: int = 0,
                           **sampling) -> dict:
    """Generate ``n`` videos per split from evaluation prompts and score them with the
    world-truth scorer: ``{split: {attribute: accuracy, ..., "all": fully correct}}``.
    With ``frames=1`` (images) motion is not scored. ``sampling`` goes to the sampler."""
    shape = module.vae.latent_shape(frames, height, width)
    out = {}
    for split in splits:
        prompts, wanted = evaluation_prompts(n, split, frames, height, width)
        videos = torch.cat([
            module.generate((len(p), *shape), p, frames=frames, seed=seed + i, **sampling).cpu()
            for i, p in enumerate(prompts[j:j + batch_size] for j in range(0, n, batch_size))])
        if frames == 1:  # an image shows no motion: score the rest (the scorer reads 2 equal frames)
            videos, wanted = videos.expand(-1, -1, 2, -1, -1), [{k: v for k, v in w.items() if k != "motion"} for w in wanted]
        out[split] = adherence(videos, wanted, **T2V_VOCABULARY)
    return out


class AdherenceCurve(pl.Callback):
    """Every ``every_n_steps`` (and at the end), score ``n`` generations per split with the
    EMA weights (when an :class:`~sora_edu.train.callbacks.EMA` callback runs) and log
    ``adherence/{split}_{attribute}`` plus ``adherence/train_minutes``: training time so
    far *without* the time spent here, so the curve is fully-correct vs training minutes.
    A watcher: it does not change the weights (nor the cache key)."""

    def __init__(self, every_n_steps: int = 500, n: int = 48, steps: int = 20, guidance: float = 4.0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.n, self.sampling = every_n_steps, n, {"steps": steps, "guidance": guidance}
        self.rows: list[dict] = []
        self._start = self._spent = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._spent = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            self.measure(trainer, pl_module)

    def measure(self, trainer, pl_module) -> None:
        from .callbacks import EMA

        begin = time.perf_counter()
        ema = EMA.running(trainer)
        if ema is not None:
            ema._swap_in(pl_module)
        hp = trainer.datamodule.hparams
        result = evaluate_text_to_video(pl_module, self.n, hp.frames, hp.height, hp.width, **self.sampling)
        if ema is not None:
            ema._swap_out(pl_module)
        row = {"step": trainer.global_step, "train_minutes": (begin - self._start - self._spent) / 60}
        row.update({f"{split}_{k}": v for split, scores in result.items() for k, v in scores.items()})
        self.rows.append(row)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"adherence/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        self._spent += time.perf_counter() - begin
        attributes = ", ".join(f"{k} {v:.0%}" for k, v in result["seen"].items() if k not in ("all", "present"))
        print(f"step {row['step']} ({row['train_minutes']:.1f} min): fully correct seen {row['seen_all']:.0%}, "
              f"held-out {row['held_out_all']:.0%} (seen: {attributes})", flush=True)


__all__ = ["AdherenceCurve", "HELD_OUT", "T2V_VOCABULARY", "T2V_WORLD", "TextVideoDataModule", "asked", "asked_in",
           "clip_adherence", "scene_boxes", "training_scenes", "complete_prompt", "evaluate_text_to_video", "evaluation_prompts",
           "held_out_prompts", "is_held_out", "scene_indices", "world_prompts"]
