"""The ``sora-edu`` command.

    sora-edu demo                      a gallery of the three toy worlds (grows into text-to-video)
    sora-edu worlds --n 100 --out DIR  a captioned sample set: mp4 files + captions.jsonl
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


def demo(out: str = "sora_edu_demo", seed: int = 0) -> Path:
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


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    argv = list(argv if argv is not None else sys.argv[1:])
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from .train.cli import main as lightning_main

        lightning_main(argv)
        return
    from jsonargparse import CLI

    CLI([demo, worlds], args=argv, as_positional=False)


if __name__ == "__main__":
    main()
