"""Resolution and duration buckets: train at native aspect ratios without padding.

Sora trains "on data at its native size" (widescreen, vertical, square); NaViT ("Patch n'
Pack", arXiv 2307.06304) packs any-resolution images into one sequence. Notebook 03 packs
tokens; at scale the cheaper trick is **bucketing**: every video goes to the bucket
``(T, H, W)`` whose aspect ratio is nearest its own (and whose length it can fill), and
every batch is drawn from one bucket, so a batch is one dense tensor and no token is padding.

:class:`BucketBatchSampler` is deterministic (a function of ``seed`` and the epoch), splits
each *global* batch across data-parallel ranks (so 2 GPUs x 4 see the very batches 1 GPU
x 8 sees), counts its own epochs (one per iteration) and resumes after the batches a
checkpointed run already trained on.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

Bucket = tuple[int, int, int]  # (frames, height, width)

# Around 64x64 pixels and 16 frames: square, 4:3, 3:4, 16:9-ish and 9:16-ish, plus images.
# Every side is a multiple of 16 (the t2v VAE's 4x times the DiT's 4x4 patch).
DEFAULT_BUCKETS: tuple[Bucket, ...] = ((16, 64, 64), (16, 48, 64), (16, 64, 48), (16, 48, 96), (16, 96, 48), (1, 64, 64))


def nearest_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> int | None:
    """The index of the bucket for a ``frames x height x width`` video: among buckets it has
    enough frames for, the nearest aspect ratio (in log space, so 2:1 and 1:2 are equally
    far from 1:1), then the longest, then the largest. ``None`` when it fits none."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    best, best_key = None, None
    for i, (t, h, w) in enumerate(buckets):
        if t > frames:
            continue
        key = (round(abs(math.log((width / height) / (w / h))), 6), -t, -h * w)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that all share one bucket.

    Args:
        buckets: the bucket of every item (any hashable; items of one bucket have one shape).
        batch_size: items per batch *per rank*; the global batch is ``batch_size * num_replicas``.
        shuffle: permute items within buckets and the order of batches every epoch.
        seed: the permutation is ``f(seed, epoch)``: identical on every rank and every run.
        drop_last: drop each bucket's incomplete last global batch (required with several
            ranks, so every rank gets the same number of equally shaped batches).
        num_replicas, rank: data-parallel world size and this rank.
        on_epoch: called with the epoch when an iteration starts (a dataset whose random
            clip starts depend on the epoch).
    """

    def __init__(self, buckets: Sequence, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, num_replicas: int = 1, rank: int = 0, on_epoch=None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if num_replicas > 1 and not drop_last:
            raise ValueError("with several ranks drop_last must be True: every rank needs a full slice of every batch")
        self.groups: dict = {}
        for i, b in enumerate(buckets):
            self.groups.setdefault(b, []).append(i)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.next_epoch, self.skip, self.on_epoch = 0, 0, 0, on_epoch
        if len(self) == 0:
            sizes = {b: len(v) for b, v in self.groups.items()}
            raise ValueError(f"no bucket holds a global batch of {batch_size * num_replicas} items (bucket sizes {sizes})")

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws (each iteration then counts one more epoch, so
        the sampler keeps its own count; Lightning's reaches ``batch_sampler.sampler`` only)."""
        self.next_epoch = epoch

    def skip_batches(self, n: int) -> None:
        """A resumed run: the next iteration starts after its first ``n`` batches."""
        self.skip = n

    def state(self, batches_done: int) -> dict:
        """Where a checkpoint taken after ``batches_done`` batches of the current iteration
        resumes: the rest of this epoch, or (all done) the whole of the next one."""
        if batches_done >= len(self):
            return {"epoch": self.epoch + 1, "skip": 0}
        return {"epoch": self.epoch, "skip": batches_done}

    def resume(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.skip_batches(state["skip"])

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches, identical on every rank."""
        step = self.batch_size * self.num_replicas
        batches = []
        for k, (bucket, items) in enumerate(sorted(self.groups.items(), key=lambda kv: repr(kv[0]))):
            items = np.array(items)
            if self.shuffle:
                items = np.random.default_rng([self.seed, self.epoch, k]).permutation(items)
            stop = len(items) - len(items) % step if self.drop_last else len(items)
            batches += [items[j:j + step].tolist() for j in range(0, stop, step)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(batches))
            batches = [batches[j] for j in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        skip, self.skip = self.skip, 0
        for batch in self.global_batches()[skip:]:
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        step = self.batch_size * self.num_replicas
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(len(v) / step) for v in self.groups.values())


__all__ = ["DEFAULT_BUCKETS", "Bucket", "BucketBatchSampler", "nearest_bucket"]
