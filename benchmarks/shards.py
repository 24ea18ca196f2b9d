"""Training the DiT from latent shards vs encoding with the VAE every step (issue F).

    python benchmarks/shards.py                       # CPU: 64 videos 16x64x64, t2v.yaml's DiT
    python benchmarks/shards.py --videos 256 --steps 30 --device cuda --precision bf16-mixed

Writes a folder of Shapes-world videos (``sora-edu worlds``), encodes it once with the cached
``vae_t2v`` (``sora-edu encode``; the encode time is printed), then times ``--steps``
training steps of the same DiT (``t2v_shards.yaml``) fed (a) from the shards and (b) by a
:class:`~sora_edu.train.folder.VideoFolderDataModule` that decodes the mp4 files and runs
the VAE on every batch. Prints seconds per step, clips/s and the speedup. The first
``--warmup`` steps are not timed.
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from sora_edu.cli import worlds
from sora_edu.train.cached import QUIET, cached_path, load_or_train_vae
from sora_edu.train.cli import from_config
from sora_edu.train.folder import encode_folder


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t = warmup, [], None

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self._t = time.perf_counter()

    def on_train_end(self, trainer, *args) -> None:
        self.seconds = time.perf_counter() - self._t


def time_fit(data_args: list[str], args) -> float:
    cli = from_config("t2v_shards", *QUIET, "--trainer.callbacks=[]", f"--trainer.max_steps={args.steps + args.warmup}",
                      f"--trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
                      f"--trainer.precision={args.precision}", "--trainer.enable_progress_bar=false", *data_args,
                      f"--data.init_args.batch_size={args.batch}")
    timer = StepTimer(args.warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = worlds(args.videos, str(Path(tmp) / "videos"), 16, 64, 64, max_objects=1)
        vae = load_or_train_vae("vae_t2v", verbose=False).eval()
        start = time.perf_counter()
        encode_folder(vae, cached_path("vae_t2v").name, folder, Path(tmp) / "shards", 16)
        encode = time.perf_counter() - start
        shards = time_fit([f"--data.init_args.shards={Path(tmp) / 'shards'}"], args)
        fly = time_fit(["--data=sora_edu.train.folder.VideoFolderDataModule", f"--data.init_args.root={folder}",
                        "--data.init_args.vae=vae_t2v"], args)
    print(f"\n{args.videos} videos 16x64x64, batch {args.batch}, {args.device}, {args.precision}, {args.threads} threads")
    print(f"encode once:      {encode:6.1f} s ({args.videos / encode:5.1f} clips/s)")
    print(f"from shards:      {shards:6.3f} s/step ({args.batch / shards:6.1f} clips/s)")
    print(f"VAE every step:   {fly:6.3f} s/step ({args.batch / fly:6.1f} clips/s)")
    print(f"speedup:          {fly / shards:6.2f}x")


if __name__ == "__main__":
    main()
