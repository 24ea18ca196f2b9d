"""Rendering speed of the Shapes world: videos per second at 16x64x64 (target >= 500 on 2 cores).

    python benchmarks/render.py [--frames 16 --height 64 --width 64 --seconds 3]

Measures the two ways data are drawn: ``world[i]`` one at a time (what a DataLoader
worker does) and ``world.samples(range(...))`` in blocks (what a notebook does).
"""

import argparse
import time

import torch

from sora_edu.data.worlds import ShapesWorld, render


def rate(fn, batch: int, seconds: float) -> float:
    fn(0, batch)  # warm-up: first calls allocate
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn(n, batch)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    world = ShapesWorld(10**9, args.frames, args.height, args.width, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"videos {args.frames}x{args.height}x{args.width}, 1-3 objects, walls and pans on")
    one = rate(lambda s, b: [world[i] for i in range(s, s + b)], 1, args.seconds)
    print(f"world[i], one by one      : {one:8.0f} videos/s")
    for batch in (8, 64):
        r = rate(lambda s, b: world.samples(range(s, s + b)), batch, args.seconds)
        print(f"world.samples, blocks of {batch:<3}: {r:8.0f} videos/s")
    scenes = [world.scene(i)[0] for i in range(256)]
    t = time.perf_counter()
    for j in range(0, 256, 8):
        render(scenes[j:j + 8])
    print(f"render() alone (no scene sampling): {256 / (time.perf_counter() - t):8.0f} videos/s")


if __name__ == "__main__":
    main()
