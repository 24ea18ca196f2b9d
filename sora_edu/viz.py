"""Seeing videos: inline HTML5 players, grids, ground-truth overlays, mp4/gif files.

Every function takes the package's layout, ``video: (C, T, H, W)`` in [-1, 1] (``C`` = 1
or 3), or a batch ``(B, C, T, H, W)`` where it says so. Videos are encoded to H.264 with
PyAV (it bundles FFmpeg, so nothing else is needed) and embedded in the notebook as a
``<video>`` tag: it plays in Jupyter, in exported HTML and on GitHub's renderer alike.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def check_video(video: torch.Tensor, name: str = "video") -> torch.Tensor:
    """Return ``video`` as float (C, T, H, W), or raise ``ValueError`` naming the layout."""
    if not isinstance(video, torch.Tensor):
        video = torch.as_tensor(np.asarray(video))
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"{name} must be (C, T, H, W) with C = 1 or 3, got shape {tuple(video.shape)}")
    return video.detach().float().cpu()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(C, T, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` uint8 frames."""
    video = check_video(video)
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if frames.shape[0] == 1:
        frames = frames.expand(3, -1, -1, -1)
    return frames.permute(1, 2, 3, 0).contiguous().numpy()


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale so tiny videos stay crisp in a browser, padded to even sides."""
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # H.264 with 4:2:0 colour needs even sides
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


def _auto_scale(height: int, width: int, target: int = 192) -> int:
    return max(1, round(target / max(height, width)))


def encode_mp4(video: torch.Tensor, fps: float = 8, scale: int | None = None) -> bytes:
    """Encode ``video (C, T, H, W)`` as an H.264 mp4 in memory (PyAV)."""
    import av

    frames = to_uint8(video)
    frames = _upscale(frames, scale or _auto_scale(*frames.shape[1:3]))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Near-lossless: these are teaching videos of a few kB, quality matters more than size.
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temp file and a rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_video(path: str | os.PathLike, video: torch.Tensor, fps: float = 8, scale: int = 1) -> Path:
    """Write ``video (C, T, H, W)`` to ``.mp4`` (H.264, PyAV) or ``.gif`` (Pillow), or a one-frame
    video to ``.png``, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        write_atomic(path, encode_mp4(video, fps, scale))
    elif suffix == ".gif":
        from PIL import Image

        frames = _upscale(to_uint8(video), scale)
        images = [Image.fromarray(f) for f in frames]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
        write_atomic(path, buffer.getvalue())
    elif suffix == ".png":
        from PIL import Image

        if video.shape[1] != 1:
            raise ValueError(f"a .png holds one frame; got a video of {video.shape[1]} frames (use .mp4 or .gif)")
        buffer = io.BytesIO()
        Image.fromarray(_upscale(to_uint8(video), scale)[0].squeeze()).save(buffer, format="PNG")
        write_atomic(path, buffer.getvalue())
    else:
        raise ValueError(f"save_video writes .mp4, .gif or (one frame) .png, got {path.name!r}")
    return path


def read_video(path: str | os.PathLike) -> torch.Tensor:
    """Decode a video file (any format FFmpeg reads) to ``(3, T, H, W)`` in [-1, 1]."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    array = torch.from_numpy(np.stack(frames)).float() / 127.5 - 1  # (T, H, W, 3)
    return array.permute(3, 0, 1, 2).contiguous()


def video_html(video: torch.Tensor, caption: str | None = None, fps: float = 8, scale: int | None = None) -> str:
    """An HTML ``<figure>`` with the video embedded (base64 mp4) and an optional caption."""
    data = base64.b64encode(encode_mp4(video, fps, scale)).decode("ascii")
    tag = (f'<video autoplay loop muted playsinline controls style="image-rendering: pixelated">'
           f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>')
    if caption:
        tag += f'<figcaption style="max-width: 240px; font-size: 12px">{html.escape(caption)}</figcaption>'
    return f'<figure style="display: inline-block; margin: 4px; vertical-align: top">{tag}</figure>'


def show_video(video: torch.Tensor, caption: str | None = None, fps: float = 8, scale: int | None = None):
    """Play ``video (C, T, H, W)`` inline in Jupyter (returns an ``IPython.display.HTML``)."""
    from IPython.display import HTML

    return HTML(video_html(video, caption, fps, scale))


def show_videos(videos: Sequence[torch.Tensor] | torch.Tensor, captions: Sequence[str] | None = None,
                fps: float = 8, scale: int | None = None, columns: int = 4):
    """A grid of inline players; ``videos`` is a list of (C, T, H, W) or a (B, C, T, H, W) batch."""
    from IPython.display import HTML

    if isinstance(videos, torch.Tensor) and videos.ndim == 5:
        videos = list(videos)
    captions = list(captions) if captions is not None else [None] * len(videos)
    if len(captions) != len(videos):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} captions")
    cells = [video_html(v, c, fps, scale) for v, c in zip(videos, captions)]
    rows = ["<div>" + "".join(cells[i:i + columns]) + "</div>" for i in range(0, len(cells), columns)]
    return HTML("".join(rows))


def overlay_boxes(video: torch.Tensor, boxes: np.ndarray, colours: Sequence[tuple[float, float, float]] | None = None,
                  trails: bool = True) -> torch.Tensor:
    """Burn boxes (and each box's trail of centres so far) into a copy of the video.

    ``boxes: (K, T, 4)`` as ``x0, y0, x1, y1`` pixels, one track per object.
    """
    video = check_video(video).clone()
    if video.shape[0] == 1:
        video = video.expand(3, -1, -1, -1).clone()
    boxes = np.asarray(boxes, dtype=np.float64)
    _, T, H, W = video.shape
    if boxes.ndim != 3 or boxes.shape[1:] != (T, 4):
        raise ValueError(f"boxes must be (K, T, 4) with T = {T}, got shape {boxes.shape}")
    palette = colours or [(1.0, 1.0, 1.0)] * len(boxes)
    for box, colour in zip(boxes, palette):
        c = torch.tensor(colour) * 2 - 1
        for t in range(T):
            x0, y0, x1, y1 = np.clip(np.round(box[t]).astype(int), 0, [W - 1, H - 1, W - 1, H - 1])
            video[:, t, y0, x0:x1 + 1] = c[:, None]
            video[:, t, y1, x0:x1 + 1] = c[:, None]
            video[:, t, y0:y1 + 1, x0] = c[:, None]
            video[:, t, y0:y1 + 1, x1] = c[:, None]
            if trails:
                centres = (box[: t + 1, :2] + box[: t + 1, 2:]) / 2
                for cx, cy in centres:
                    xi, yi = int(np.clip(cx, 0, W - 1)), int(np.clip(cy, 0, H - 1))
                    video[:, t, yi, xi] = c
    return video


def plot_frames(video: torch.Tensor, frames: Sequence[int] | None = None, boxes: np.ndarray | None = None,
                title: str | None = None, axes=None):
    """A strip of frames (matplotlib), optionally with truth boxes; returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = to_uint8(video)
    T = images.shape[0]
    frames = list(frames) if frames is not None else sorted(set(np.linspace(0, T - 1, min(T, 6)).round().astype(int)))
    if axes is None:
        fig, axes = plt.subplots(1, len(frames), figsize=(2 * len(frames), 2.2), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    for ax, t in zip(axes, frames):
        ax.imshow(images[t], interpolation="nearest")
        ax.set_title(f"t = {t}", fontsize=9)
        ax.axis("off")
        if boxes is not None:
            for k, box in enumerate(np.asarray(boxes)):
                x0, y0, x1, y1 = box[t]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=f"C{k}", linewidth=1.5))
                centres = (box[: t + 1, :2] + box[: t + 1, 2:]) / 2 - 0.5
                ax.plot(centres[:, 0], centres[:, 1], ".-", color=f"C{k}", markersize=3, linewidth=1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def tile(videos: torch.Tensor, columns: int = 4, pad: int = 1) -> torch.Tensor:
    """Tile a batch ``(B, C, T, H, W)`` into one video ``(C, T, H', W')`` (a gallery in a single file)."""
    if videos.ndim != 5:
        raise ValueError(f"tile expects (B, C, T, H, W), got shape {tuple(videos.shape)}")
    B, C, T, H, W = videos.shape
    rows = -(-B // columns)
    canvas = torch.zeros(C, T, rows * (H + pad) + pad, columns * (W + pad) + pad)  # grey gutters
    for b in range(B):
        r, c = divmod(b, columns)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        canvas[:, :, y:y + H, x:x + W] = videos[b]
    return canvas
