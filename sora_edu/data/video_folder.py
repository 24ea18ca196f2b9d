"""A folder of your own captioned videos, as training clips (notebook 10).

Layout: any tree of video files (``.mp4 .webm .avi .mkv .mov .m4v .gif``) under ``root``,
captioned by the first of these that exists:

* ``root/captions.jsonl``: one JSON object per line with ``"video"`` (path relative to
  ``root``) and ``"caption"`` (what ``sora-edu worlds`` writes; ``caption_field`` picks
  another key, e.g. ``"alt_text"``);
* ``root/captions.csv``: columns ``video,caption``;
* a sidecar ``clip.txt`` next to every ``clip.mp4``.

Decoding uses **PyAV** (FFmpeg bundled in the wheel, so it installs anywhere pip does;
torchvision 0.29 dropped video I/O and torchcodec needs a system FFmpeg). Every file is
probed once when the dataset is built: empty, unreadable, uncaptioned or too-short files
are skipped with a warning and listed in :attr:`VideoFolder.skipped` (``report()`` prints
them), and training goes on with the rest. What probing found is kept in an index
(``SORA_EDU_CACHE/video_index/``, keyed by the folder, each file checked by size and
modification time), so the next run, and every other DDP rank, opens only new or changed
files. A file that fails later, mid-decode, is
reported the same way and replaced by the next good item of its bucket.

Each item is a clip of ``frames`` frames taken every ``stride`` frames from a random start
(a function of ``seed``, the epoch and the item, so runs repeat), resized to its bucket
(:mod:`sora_edu.data.buckets`) by ``resize="crop"`` (scale to cover, centre crop: keeps
aspect) or ``"stretch"``. Layout: ``video: (3, T, H, W)`` float in [-1, 1].
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .buckets import DEFAULT_BUCKETS, Bucket, nearest_bucket

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".gif")


@dataclass(frozen=True)
class VideoInfo:
    """What probing a file found: ``frames`` decodable frames of ``height x width``."""

    path: Path
    caption: str
    frames: int
    height: int
    width: int
    fps: float


def read_captions(root: Path, field: str = "caption") -> dict[str, str]:
    """Captions by path relative to ``root`` (posix), from captions.jsonl or captions.csv
    (sidecar .txt files are read per video by :class:`VideoFolder`)."""
    if (root / "captions.jsonl").exists():
        captions = {}
        for n, line in enumerate((root / "captions.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[Path(row["video"]).as_posix()] = str(row[field])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                warnings.warn(f"{root / 'captions.jsonl'} line {n}: skipped ({type(e).__name__}: {e}); "
                              f"each line needs 'video' and {field!r}", stacklevel=2)
        return captions
    if (root / "captions.csv").exists():
        with open(root / "captions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"video", field} <= set(rows[0]):
            raise ValueError(f"{root / 'captions.csv'} needs the columns 'video' and {field!r}, has {list(rows[0])}")
        return {Path(r["video"]).as_posix(): r[field] for r in rows}
    return {}


def probe(path: Path) -> tuple[int, int, int, float]:
    """``(frames, height, width, fps)`` of a video file, via its container header (the
    frames are counted by decoding when the header does not say)."""
    import av

    if path.stat().st_size == 0:
        raise ValueError("empty file")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
        frames = stream.frames
        height, width = stream.codec_context.height, stream.codec_context.width
        if not frames:
            frames = sum(1 for _ in container.decode(stream))
    if frames < 1 or height < 1 or width < 1:
        raise ValueError("no decodable frames")
    return frames, height, width, fps


def decode_frames(path: Path, start: int, count: int, stride: int = 1) -> torch.Tensor:
    """Frames ``start, start + stride, ...`` (``count`` of them) as ``(3, T, H, W)`` in [-1, 1].

    A clip that starts late in a long video is not decoded from the first frame: the
    container seeks to the keyframe at or before ``start`` and frames are numbered by
    their timestamps. Where timestamps are missing, skip or repeat (a variable frame rate)
    or the seek lands past ``start``, it decodes from the beginning and counts frames."""
    if start > 0:
        try:
            return _decode(path, start, count, stride, seek=True)
        except _NoSeek:
            pass
    return _decode(path, start, count, stride, seek=False)


class _NoSeek(Exception):
    """Seeking cannot be trusted for this file."""


def _decode(path: Path, start: int, count: int, stride: int, seek: bool) -> torch.Tensor:
    import av

    last = start + (count - 1) * stride
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, base, origin = stream.average_rate or stream.guessed_rate, stream.time_base, stream.start_time or 0
        if seek:
            if not rate or not base:
                raise _NoSeek
            container.seek(origin + int(start / rate / base), stream=stream, backward=True, any_frame=False)
        previous = None
        for i, frame in enumerate(container.decode(stream)):
            if seek:
                if frame.pts is None:
                    raise _NoSeek
                i = round((frame.pts - origin) * base * rate)
                # Past the clip's start, or timestamps that skip or repeat (a variable frame
                # rate): numbering by time would not match numbering by decode order.
                if (previous is None and i > start) or (previous is not None and i != previous + 1):
                    raise _NoSeek
                previous = i
            if i > last:
                break
            if i >= start and (i - start) % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
    if len(frames) < count:
        raise ValueError(f"decoded {len(frames)} of the {count} frames asked for")
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def resize_video(video: torch.Tensor, height: int, width: int, resize: str = "crop") -> torch.Tensor:
    """``(3, T, h, w)`` -> ``(3, T, height, width)``: ``"crop"`` scales to cover then crops
    the centre (aspect kept), ``"stretch"`` scales each side on its own."""
    if resize not in ("crop", "stretch"):
        raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")
    h, w = video.shape[-2:]
    if (h, w) == (height, width):
        return video
    frames = video.transpose(0, 1)  # (T, 3, h, w): interpolate treats T as the batch
    if resize == "crop":
        scale = max(height / h, width / w)
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        frames = frames[..., top:top + height, left:left + width]
    else:
        frames = F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return frames.transpose(0, 1).clamp(-1, 1).contiguous()


class VideoFolder(Dataset):
    """Captioned clips from a folder of videos; items ``{"video", "caption", "index"}``.

    Args:
        root: the folder (searched recursively).
        frames, stride: a clip is ``frames`` frames taken every ``stride`` frames; a video
            shorter than ``(frames - 1) * stride + 1`` frames only fits one-frame buckets (or
            is skipped as too short).
        buckets: ``(T, H, W)`` sizes; each video goes to its nearest (:func:`nearest_bucket`).
            Default: one bucket ``(frames, 64, 64)``; pass :data:`DEFAULT_BUCKETS`-like lists
            to keep native aspect ratios.
        resize: ``"crop"`` or ``"stretch"`` (:func:`resize_video`).
        caption_field: key of the caption in captions.jsonl / column in captions.csv.
        random_clip: random start (seeded) or the first frames.
        seed: clip starts are drawn from ``default_rng([seed, epoch, index])``.
        probe_index: reuse (and update) the cached probe index; ``False`` probes every file.
    """

    def __init__(self, root: str | Path, frames: int = 16, stride: int = 1, buckets: Sequence[Bucket] | None = None,
                 resize: str = "crop", caption_field: str = "caption", random_clip: bool = True, seed: int = 0,
                 probe_index: bool = True) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got frames={frames}, stride={stride}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no video folder {str(root)!r}")
        self.frames, self.stride, self.resize, self.random_clip, self.seed = frames, stride, resize, random_clip, seed
        self.buckets: list[Bucket] = [tuple(b) for b in (buckets or [(frames, 64, 64)])]
        for t, h, w in self.buckets:
            if t > frames:
                raise ValueError(f"bucket {(t, h, w)} has more frames than a clip ({frames})")
        self.epoch = 0
        self.items: list[VideoInfo] = []
        self.bucket_of: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        self.probed = 0  # files opened to probe them (the rest came from the index)
        index_path = _index_path(self.root) if probe_index else None
        old = _read_index(index_path) if index_path else {}
        self._index: dict[str, dict] = {}
        captions = read_captions(self.root, caption_field)
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
            self._add(path, captions, old)
        if index_path and self._index != old:
            from ..viz import write_atomic

            try:
                write_atomic(index_path, json.dumps(self._index, sort_keys=True).encode())
            except OSError as e:  # only a cache: a read-only cache folder costs the next run a probe
                warnings.warn(f"could not write the probe index {index_path}: {e}", stacklevel=2)
        for path, reason in self.skipped:
            warnings.warn(f"skipped {path}: {reason}", stacklevel=2)
        if not self.items:
            raise ValueError(f"no usable videos in {self.root} ({len(self.skipped)} skipped)\n{self.report()}")

    def _probe(self, path: Path, name: str, old: dict) -> tuple[int, int, int, float]:
        """:func:`probe`, or the index's record of it when the file has not changed."""
        stat = path.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = old.get(name)
        usable = isinstance(entry, dict) and {k: entry.get(k) for k in key} == key and (
            isinstance(entry.get("error"), str) or (isinstance(entry.get("probe"), list) and len(entry["probe"]) == 4))
        if not usable:
            self.probed += 1
            try:
                entry = key | {"probe": list(probe(path))}
            except Exception as e:  # noqa: BLE001 -- FFmpeg raises many kinds; every one means "skip it"
                entry = key | {"error": getattr(e, "strerror", None) or str(e)}  # FFmpeg's message, no file name
        self._index[name] = entry
        if "error" in entry:
            raise ValueError(entry["error"])
        frames, height, width, fps = entry["probe"]
        return int(frames), int(height), int(width), float(fps)

    def _add(self, path: Path, captions: dict[str, str], old: dict) -> None:
        name = path.relative_to(self.root).as_posix()
        caption = captions.get(name)
        if caption is None and path.with_suffix(".txt").exists():
            caption = path.with_suffix(".txt").read_text().strip()
        if caption is None:
            self.skipped.append((name, "no caption"))
            return
        try:
            count, height, width, fps = self._probe(path, name, old)
        except ValueError as e:
            reason = str(e)
            self.skipped.append((name, "empty file" if reason == "empty file" else f"unreadable: {reason}"))
            return
        usable = (count - 1) // self.stride + 1  # clip frames this video can give
        bucket = nearest_bucket(usable, height, width, self.buckets)
        if bucket is None:
            self.skipped.append((name, f"too short: {count} frames, a clip needs {(self.frames - 1) * self.stride + 1}"))
            return
        self.items.append(VideoInfo(path, caption, count, height, width, fps))
        self.bucket_of.append(bucket)

    def report(self) -> str:
        """The files that were skipped and why (one line each)."""
        lines = [f"{len(self.items)} videos used, {len(self.skipped)} skipped"]
        lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def clip(self, i: int) -> torch.Tensor:
        """Item ``i``'s clip, decoded and resized to its bucket: ``(3, T, H, W)``."""
        info, (t, h, w) = self.items[i], self.buckets[self.bucket_of[i]]
        span = (t - 1) * self.stride + 1
        start = 0
        if self.random_clip and info.frames > span:
            start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, info.frames - span + 1))
        return resize_video(decode_frames(info.path, start, t, self.stride), h, w, self.resize)

    def __getitem__(self, i: int) -> dict:
        for j in self._same_bucket_from(i):
            try:
                return {"video": self.clip(j), "caption": self.items[j].caption, "index": j}
            except Exception as e:  # noqa: BLE001 -- a file that broke after probing: report it, go on
                name = self.items[j].path.relative_to(self.root).as_posix()
                if (name, f"decode failed: {e}") not in self.skipped:
                    self.skipped.append((name, f"decode failed: {e}"))
                    warnings.warn(f"skipped {name}: decode failed ({e}); using the next video of its bucket", stacklevel=2)
        raise RuntimeError(f"every video of bucket {self.buckets[self.bucket_of[i]]} failed to decode\n{self.report()}")

    def _same_bucket_from(self, i: int):
        """``i``, then the other items of ``i``'s bucket in order (wrapping around)."""
        n = len(self.items)
        return [j % n for j in range(i, i + n) if self.bucket_of[j % n] == self.bucket_of[i]]


def _index_path(root: Path) -> Path:
    from ..cache import cache_dir, config_hash

    return cache_dir() / "video_index" / f"{config_hash({'root': str(root.resolve())})}.json"


def _read_index(path: Path) -> dict:
    """The probe index, or nothing when it is missing or unreadable (it is only a cache)."""
    try:
        index = json.loads(path.read_text())
        return index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = ["VIDEO_SUFFIXES", "VideoFolder", "VideoInfo", "decode_frames", "probe", "read_captions", "resize_video"]
