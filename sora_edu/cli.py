"""The ``sora-edu`` command.

    sora-edu demo --prompt "a red circle moves left"   train (or load) a tiny text-to-video model, write demo.mp4
    sora-edu sample --prompt ... --frames 16 --height 64 --width 128   sample a trained model at any size
    sora-edu gallery                   a gallery of the three toy worlds
    sora-edu worlds --n 100 --out DIR  a captioned sample set: mp4 files + captions.jsonl
    sora-edu encode --data DIR --out SHARDS   encode a video folder once into latent shards
    sora-edu fit --config NAME.yaml    train with LightningCLI (also validate, test, predict)

Subcommands are plain type-hinted functions turned into a CLI by jsonargparse, the same
library under LightningCLI, so ``--help`` and ``--print_config`` work the same way.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def smoke() -> bool:
    """True when ``SORA_EDU_SMOKE=1``: every size shrinks so things run in seconds (CI)."""
    return os.environ.get("SORA_EDU_SMOKE") == "1"


def worlds(n: int = 100, out: str = "sora_edu_worlds", frames: int = 16, height: int = 64, width: int = 64,
           seed: int = 0, fps: float = 8.0, max_objects: int = 3) -> Path:
    """Write ``n`` Shapes-world videos as mp4 plus ``captions.jsonl`` (caption, alt-text, truth).

    Args:
        n: number of videos.
        out: output folder; ``videos/000000.mp4`` ... and ``captions.jsonl`` go there.
        frames: frames per video (T).
        height: frame height in pixels.
        width: frame width in pixels.
        seed: world seed; the same seed writes the same set.
        fps: frames per second written into the mp4 files.
        max_objects: at most this many objects per video (1-3).
    """
    from tqdm.auto import tqdm

    from .data.worlds import ShapesWorld, WorldConfig
    from .viz import write_atomic, save_video

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    folder = Path(out)
    world = ShapesWorld(n, frames, height, width, seed, WorldConfig(max_objects=max_objects))
    lines = []
    for start in tqdm(range(0, n, 64), desc="rendering", unit="block"):
        for sample in world.samples(range(start, min(n, start + 64))):
            name = f"videos/{sample.index:06d}.mp4"
            save_video(folder / name, sample.video, fps=fps)
            lines.append(json.dumps({
                "video": name, "caption": sample.caption, "alt_text": sample.alt_text,
                "frames": frames, "height": height, "width": width, "fps": fps, "seed": seed,
                "index": sample.index, "truth": sample.scene.truth(),
            }))
    write_atomic(folder / "captions.jsonl", ("\n".join(lines) + "\n").encode())
    print(f"wrote {n} videos and {folder / 'captions.jsonl'}")
    return folder


def _text_to_video_model(config: str, checkpoint: str | None, overrides: list[str]):
    """The text-to-video module of ``config``: weights from a Lightning ``checkpoint``
    (what ``sora-edu fit`` writes), else from the cache (trained now if absent)."""
    from .train.cached import QUIET, load_or_train
    from .train.cli import from_config

    overrides = [*overrides, *_smoke_clips(config, overrides)]
    if checkpoint is None:
        return load_or_train(config, *overrides)
    module = from_config(config, *QUIET, *overrides).model
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state))
    print(f"loaded {checkpoint}")
    return module.eval()


def _smoke_clips(config: str, overrides: list[str]) -> list[str]:
    """In smoke mode, the CLIPs a config starts its text encoder from or aligns to
    (``text_from``, ``repa_from``, as ``t2v_unet`` does) and the shape probe it aligns to
    (``probe_from``) shrink too, on the smoke autoencoder: without this they would train at
    full size, on a full-size autoencoder."""
    if not smoke():
        return []
    from .train.cached import QUIET, smoke_overrides
    from .train.cli import from_config

    hp = from_config(config, *QUIET, *overrides).model.hparams
    clip = smoke_overrides(10, model_vae=False)
    return [f"--model.init_args.{k}_overrides={clip}" for k in ("text", "repa", "probe") if hp.get(f"{k}_from")]


def _write_samples(module, prompt: str, n: int, frames: int, height: int, width: int, seed: int, guidance: float,
                   steps: int, folder: Path, name: str, autoguidance: float = 0.0) -> dict:
    from .eval.world_score import adherence
    from .train.text_video import T2V_VOCABULARY, complete_prompt
    from .viz import save_video, tile

    vae = module.vae
    step = module.net.size_multiple  # a DiT's patch, a U-Net's downsampling
    factor = vae.space_factor * step
    if frames < 1 or height % factor or width % factor or height < factor or width < factor:
        raise ValueError(f"this model makes videos of any frames >= 1 and height, width multiples of {factor} "
                         f"(the VAE's {vae.space_factor}x times the network's {step}); got {frames}x{height}x{width}")
    captions, named = zip(*[complete_prompt(prompt, seed + i, frames, height, width) for i in range(n)])
    print(f"prompt: {prompt!r}")
    for i, c in enumerate(captions):
        print(f"  sample {i}: {c!r}")
    videos = module.generate((n, *vae.latent_shape(frames, height, width)), list(captions), frames=frames, seed=seed,
                             steps=steps, guidance=guidance, autoguidance=autoguidance).cpu()
    movie = save_video(folder / f"{name}.mp4", videos[0], fps=8, scale=4)
    if n > 1:
        save_video(folder / f"{name}_all.mp4", tile(videos, min(n, 4)), fps=8, scale=4)
    scores = adherence(videos, list(named), **T2V_VOCABULARY)
    shown = ", ".join(f"{k} {v:.0%}" for k, v in scores.items() if k != "all")
    print(f"adherence (world-truth scorer, attributes the prompt names): fully correct {scores['all']:.0%} ({shown})")
    print(f"video: {movie.resolve()}")
    return scores


def demo(prompt: str = "a red circle moves left", out: str = "sora_edu_demo", n: int = 4, seed: int = 0,
         guidance: float = 4.0, steps: int = 20) -> Path:
    """Train (or load from the cache) the demo text-to-video model -- a video autoencoder and
    a spacetime DiT on the Shapes world, ~5 minutes on 2 CPU cores the first time -- and
    write ``OUT/demo.mp4`` for ``prompt``, printing how well it adheres to the prompt.

    Args:
        prompt: what to generate; attributes it leaves out are filled in at random.
        out: output folder (``demo.mp4``; ``demo_all.mp4`` tiles all ``n`` samples).
        n: samples drawn (the adherence figure is over all of them).
        seed: sampling seed.
        guidance: classifier-free guidance scale.
        steps: sampler steps (Euler, rectified flow).
    """
    if smoke():
        n, steps = min(n, 2), min(steps, 4)
    from .train.cached import smoke_overrides

    module = _text_to_video_model("t2v_demo", None, smoke_overrides(10))
    folder = Path(out)
    _write_samples(module, prompt, n, 16, 64, 64, seed, guidance, steps, folder, "demo")
    return folder


def sample(prompt: str, frames: int = 16, height: int = 64, width: int = 64, model: str = "t2v",
           checkpoint: str | None = None, out: str = "sora_edu_sample", n: int = 1, seed: int = 0,
           guidance: float = 4.0, steps: int = 20, autoguidance: float = 0.0) -> Path:
    """Sample a text-to-video model at any size it supports (widescreen, vertical, longer).

    Args:
        prompt: what to generate; attributes it leaves out are filled in at random.
        frames: video length (frames >= 1; 1 is an image).
        height: frame height (a multiple of the VAE's compression times the DiT's patch: 16).
        width: frame width (same rule).
        model: the model's config (``t2v``, ``t2v_demo`` or a YAML file).
        checkpoint: a Lightning checkpoint written by ``sora-edu fit --config MODEL``; without
            it, the model ``MODEL`` trains is loaded from the cache (trained now if absent).
        out: output folder (``sample.mp4``).
        n: samples drawn.
        seed: sampling seed.
        guidance: classifier-free guidance scale.
        steps: sampler steps.
        autoguidance: weight of autoguidance (a model trained with ``autoguide_at``, as
            ``t2v_unet`` is: 1 is what it was measured with); 0 is off.
    """
    from .train.cached import smoke_overrides

    module = _text_to_video_model(model, checkpoint, smoke_overrides(10))
    folder = Path(out)
    _write_samples(module, prompt, n, frames, height, width, seed, guidance, steps, folder, "sample", autoguidance)
    return folder


def gallery(out: str = "sora_edu_gallery", seed: int = 0) -> Path:
    """Render a gallery of the three toy worlds to ``OUT/gallery.mp4`` and ``OUT/gallery.html``.

    Args:
        out: output folder.
        seed: which samples to show.
    """
    from .data.digits import MovingDigits
    from .data.pans import CameraPans
    from .data.worlds import ShapesWorld
    from .viz import write_atomic, save_video, tile, video_html

    n, frames, size = (4, 8, 32) if smoke() else (8, 16, 64)
    shapes = ShapesWorld(n, frames, size, size, seed).samples(range(n))
    digits = [MovingDigits(n, frames, size, size, seed).sample(i) for i in range(n)]
    pans = [CameraPans(n, frames, size, size, seed).sample(i) for i in range(n)]
    everything = [(s.video, s.caption) for s in shapes] + [(d.video, d.caption) for d in digits] + \
                 [(p.video, p.caption) for p in pans]
    folder = Path(out)
    movie = save_video(folder / "gallery.mp4", tile(torch.stack([v for v, _ in everything]), columns=n), fps=8, scale=3)
    sections = []
    for title, part in (("Shapes world", everything[:n]), ("Moving digits", everything[n:2 * n]),
                        ("Camera pans over photos", everything[2 * n:])):
        sections.append(f"<h2>{title}</h2>" + "".join(video_html(v, c) for v, c in part))
    page = "<html><head><meta charset='utf-8'><title>sora_edu demo</title></head><body>" \
           "<h1>sora_edu: the three toy worlds</h1>" + "".join(sections) + "</body></html>"
    write_atomic(folder / "gallery.html", page.encode())
    print(f"gallery video: {movie.resolve()}")
    print(f"gallery page:  {(folder / 'gallery.html').resolve()}")
    return folder


def encode(data: str, out: str, vae: str = "vae_t2v", vae_overrides: list[str] | None = None, frames: int = 16,
           stride: int = 1, buckets: list[list[int]] | None = None, resize: str = "crop", caption_field: str = "caption",
           shard_size: int = 256, batch_size: int = 16, seed: int = 0) -> Path:
    """Encode a folder of captioned videos once into latent shards (safetensors) for
    ``LatentShardDataModule``: the DiT then trains without running the VAE. Resumable: run
    the same command again after an interruption and it continues where it stopped.

    Args:
        data: the video folder (captions.jsonl, captions.csv or sidecar .txt files).
        out: the shard folder (shards, manifest.json, tokenizer.json).
        vae: the autoencoder: a packaged or YAML config whose model ``sora-edu fit --config``
            cached (trained now if absent).
        vae_overrides: the ``--key=value`` overrides that model was trained with.
        frames: frames per clip.
        stride: take every ``stride``-th frame.
        buckets: ``[[T, H, W], ...]`` sizes videos are bucketed to by aspect ratio (default
            one bucket ``[frames, 64, 64]``).
        resize: ``crop`` (keep aspect, crop the centre) or ``stretch``.
        caption_field: caption key (jsonl) or column (csv).
        shard_size: clips per shard.
        batch_size: clips per VAE call.
        seed: clip starts.
    """
    from .train.cached import cached_path, load_or_train_vae
    from .train.folder import encode_folder

    overrides = list(vae_overrides or [])
    net = load_or_train_vae(vae, *overrides, verbose=False).eval()
    manifest = encode_folder(net, cached_path(vae, *overrides).name, data, out, frames, stride, buckets, resize,
                             caption_field, shard_size, batch_size, seed)
    total = sum(manifest["shards"].values())
    print(f"{total} clips in {len(manifest['shards'])} shards in {out}; {len(manifest['skipped'])} files skipped")
    for name, reason in manifest["skipped"]:
        print(f"  skipped {name}: {reason}")
    if manifest["complete"]:
        from .models.text import WordTokenizer

        words = len(WordTokenizer.load(Path(out) / "tokenizer.json"))
        print(f"caption vocabulary: {Path(out) / 'tokenizer.json'} ({words} words: a DiT on these captions takes "
              f"--model.init_args.tokenizer={Path(out) / 'tokenizer.json'} --model.init_args.net.init_args.vocab_size={words})")
    return Path(out)


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    argv = list(argv if argv is not None else sys.argv[1:])
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from .train.cli import main as lightning_main

        lightning_main(argv)
        return
    from jsonargparse import CLI

    CLI([demo, sample, gallery, worlds, encode], args=argv, as_positional=False)


if __name__ == "__main__":
    main()
