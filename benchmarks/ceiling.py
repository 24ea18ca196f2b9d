"""The autoencoder's ceiling, group by group: how often the world-truth scorer still reads a
video's shape right after the autoencoder, per (size, shape) and still vs moving, and after
noise of a given size is added to the scaled latent (a denoiser's error, roughly).

    python benchmarks/ceiling.py [--vae vae_t2v] [--n 32] [--sizes small] [--shapes cross] [-- --model.init_args.net.init_args.latent_noise=0.3 ...]

A generator on these latents cannot do better than the autoencoder's reconstructions, and an
average over all videos hides a small group at its ceiling (the small cross: 14 px across,
4.7 px arms, moving 2.6 px a frame, so one 4-frame latent frame holds it at four places).
Uses the cached autoencoder (trains it first if the cache lacks it; minutes).
"""

import argparse
import time

import torch

from sora_edu.data.worlds import ShapesWorld
from sora_edu.eval.world_score import adherence
from sora_edu.train.cached import load_or_train_vae
from sora_edu.train.text_video import T2V_VOCABULARY, T2V_WORLD, asked


@torch.no_grad()
def shape_kept(vae, videos: torch.Tensor, wanted: list[dict], sigma: float = 0.0, seed: int = 0) -> float:
    """Fraction of ``videos (N, 3, T, H, W)`` whose shape the scorer reads right after encoding,
    adding ``sigma`` N(0, 1) to the *scaled* latent, and decoding."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for v in videos.split(16):
        z = vae.encode(v)
        z = z + sigma / float(vae.scale_factor) * torch.randn(z.shape, generator=g)
        recs.append(vae.decode(z, v.shape[2]).clamp(-1, 1))
    return adherence(torch.cat(recs), wanted, **T2V_VOCABULARY)["shape"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="vae_t2v")
    parser.add_argument("--n", type=int, default=32, help="videos per group")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--sizes", nargs="+", default=["small", "large"])
    parser.add_argument("--shapes", nargs="+", default=list(T2V_WORLD.shapes))
    parser.add_argument("overrides", nargs="*", help="the autoencoder config's overrides (after --)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    vae = load_or_train_vae(args.vae, *args.overrides).eval()
    print(f"{args.vae} {' '.join(args.overrides)}: latent {tuple(vae.latent_shape(16, 64, 64))} for 16x64x64")
    print(f"{'group':24s} " + " ".join(f"sigma {s:<4}" for s in args.sigmas))
    start = time.perf_counter()
    for size in args.sizes:
        for shape in args.shapes:
            for group, motions in (("still", ("still",)), ("moving", ("left", "right", "up", "down"))):
                per = max(1, args.n // len(motions))
                samples = [s for motion in motions
                           for s in ShapesWorld(per, 16, 64, 64, seed=5, config=T2V_WORLD, shape=shape, size=size,
                                                motion=motion).samples(range(per))]
                videos = torch.stack([s.video for s in samples])
                wanted = [asked(s.scene) for s in samples]
                kept = [shape_kept(vae, videos, wanted, sigma) for sigma in args.sigmas]
                print(f"{size + ' ' + shape + ', ' + group:24s} " + " ".join(f"{k:10.0%}" for k in kept)
                      + f"   ({len(samples)} videos)", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
