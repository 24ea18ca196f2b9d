"""The video compression network: a causal 3D convolutional autoencoder.

Sora's report: "We train a network that reduces the dimensionality of visual data ...
compresses the video temporally and spatially." Ours follows latent diffusion ("High-
Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752) for the
bottleneck and MAGVIT-v2 ("Language Model Beats Diffusion", arXiv 2310.05737) for time:
every convolution is **causal** in time (padding only before the first frame), so latent
frame ``t`` depends on video frames ``<= t`` only, and **frame 0 is encoded on its own**.
An image is a one-frame video, and image and video share one model.

With ``temporal_down = 2`` (4x in time) a video of ``T = 1 + 4k`` frames gives ``1 + k``
latent frames: the first for frame 0 alone, then one per 4 frames. Other ``T`` are padded
at the end (repeating the last frame) and cropped back after decoding.

Two bottlenecks behind one interface (``bottleneck=``): ``"kl"`` (a diagonal Gaussian
with a KL penalty), ``"vq"`` (:class:`~sora_edu.models.quantize.VectorQuantizer`) and
``"fsq"`` (:class:`~sora_edu.models.quantize.FSQ`).

Layouts: video ``(B, C, T, H, W)`` in [-1, 1]; latents ``(B, z_channels, T', H', W')``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .quantize import FSQ, VectorQuantizer


class CausalConv3d(nn.Module):
    """3D convolution that never looks at future frames: the time axis is padded only at
    the start, with copies of frame 0 (so frame 0's output is a function of frame 0)."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int] = 3, stride: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(cin, cout, (kt, kh, kw), stride=tuple(stride), padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


def causal_conv(cin: int, cout: int, stride: Sequence[int] = (1, 1, 1), factorised: bool = True) -> nn.Module:
    """A causal 3x3x3 convolution, or its (2+1)D factorisation (R(2+1)D, arXiv 1711.11248):
    a 1x3x3 spatial conv then a 3x1x1 causal temporal conv, ~2x cheaper on a CPU."""
    st, sh, sw = stride
    if not factorised:
        return CausalConv3d(cin, cout, 3, stride)
    return nn.Sequential(CausalConv3d(cin, cout, (1, 3, 3), (1, sh, sw)), CausalConv3d(cout, cout, (3, 1, 1), (st, 1, 1)))


class CausalPatchify(nn.Module):
    """Space-time to depth, causally: fold ``pt x p x p`` blocks into channels after padding
    the start with ``pt - 1`` copies of frame 0, so the first block holds frame 0 alone.
    ``(B, C, 1 + pt*k, H, W) -> (B, C*pt*p*p, 1 + k, H/p, W/p)``: a free first downsampling
    that keeps the expensive convolutions off the full-resolution video."""

    def __init__(self, pt: int, p: int) -> None:
        super().__init__()
        self.pt, self.p = pt, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pt > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.pt - 1, -1, -1), x], dim=2)
        return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (c pt ph pw) t h w", pt=self.pt, ph=self.p, pw=self.p)


class CausalUnpatchify(nn.Module):
    """Inverse of :class:`CausalPatchify`: depth to space-time, dropping the ``pt - 1``
    padding frames at the start."""

    def __init__(self, pt: int, p: int) -> None:
        super().__init__()
        self.pt, self.p = pt, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b (c pt ph pw) t h w -> b c (t pt) (h ph) (w pw)", pt=self.pt, ph=self.p, pw=self.p)
        return x[:, :, self.pt - 1:]


class Norm(nn.Module):
    """Normalisation that keeps the network causal, on ``(B, C, T, H, W)``.

    * ``"channel"`` (default): LayerNorm over the channels of each position (as in
      ConvNeXt, arXiv 2201.03545). Nothing is averaged over space or time.
    * ``"group"``: GroupNorm over (channels, H, W) of each frame (latent diffusion's choice,
      made per frame so time stays causal). It subtracts each frame's mean, so a flat
      background colour must be re-derived from channel differences: on the Shapes world it
      doubles the error on flat regions and costs ~1 dB (measured, notebook 04).
    * ``"none"``: identity; fine for the shallow toy networks.
    """

    def __init__(self, channels: int, kind: str = "channel") -> None:
        super().__init__()
        if kind not in ("channel", "group", "none"):
            raise ValueError(f"norm must be 'channel', 'group' or 'none', got {kind!r}")
        self.kind = kind
        self.norm = {"channel": lambda: nn.LayerNorm(channels), "group": lambda: nn.GroupNorm(min(8, channels), channels),
                     "none": nn.Identity}[kind]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "channel":
            return self.norm(x.movedim(1, -1)).movedim(-1, 1)
        if self.kind == "group":
            b, c, t, h, w = x.shape
            y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
            return y.reshape(b, t, c, h, w).transpose(1, 2)
        return x


class ResBlock(nn.Module):
    """Pre-activation residual block of two causal convolutions (normalisation: :class:`Norm`)."""

    def __init__(self, cin: int, cout: int, factorised: bool = True, norm: str = "channel") -> None:
        super().__init__()
        self.norm1, self.conv1 = Norm(cin, norm), causal_conv(cin, cout, factorised=factorised)
        self.norm2, self.conv2 = Norm(cout, norm), causal_conv(cout, cout, factorised=factorised)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, in_channels: int, channels: Sequence[int], temporal_down: int, out_channels: int,
                 stem: Sequence[int] = (1, 1), factorised: bool = True, norm: str = "channel") -> None:
        super().__init__()
        pt, p = stem
        self.stem = CausalPatchify(pt, p)
        self.conv_in = CausalConv3d(in_channels * pt * p * p, channels[0], (1, 1, 1))
        layers = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            t_stride = 2 if i < temporal_down else 1
            layers += [ResBlock(cin, cin, factorised, norm), causal_conv(cin, cout, (t_stride, 2, 2), factorised)]
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(channels[-1], channels[-1], factorised, norm)
        self.norm_out = Norm(channels[-1], norm)
        self.conv_out = CausalConv3d(channels[-1], out_channels, (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(self.stem(x))))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest 2x upsampling in space, and in time the causal way: latent frame 0 gives one
    frame, every later latent frame two (``T' -> 1 + 2 (T' - 1)``)."""

    def __init__(self, channels: int, cout: int, time: bool, factorised: bool = True) -> None:
        super().__init__()
        self.time = time
        self.conv = causal_conv(channels, cout, factorised=factorised)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        if self.time:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        return self.conv(x)


class Decoder(nn.Module):
    def __init__(self, out_channels: int, channels: Sequence[int], temporal_down: int, z_channels: int,
                 stem: Sequence[int] = (1, 1), factorised: bool = True, refine: int = 0, norm: str = "channel") -> None:
        super().__init__()
        rev = list(channels)[::-1]
        pt, p = stem
        self.conv_in = CausalConv3d(z_channels, rev[0])
        self.mid = ResBlock(rev[0], rev[0], factorised, norm)
        n = len(rev) - 1
        layers = []
        for i, (cin, cout) in enumerate(zip(rev[:-1], rev[1:])):
            # Temporal upsampling mirrors the encoder: its first `temporal_down` levels were
            # the ones that halved time, which are the decoder's last ones.
            layers += [ResBlock(cin, cin, factorised, norm), Upsample(cin, cout, (n - 1 - i) < temporal_down, factorised)]
        self.up = nn.Sequential(*layers)
        self.post = ResBlock(rev[-1], rev[-1], factorised, norm)
        self.norm_out = Norm(rev[-1], norm)
        self.conv_out = CausalConv3d(rev[-1], out_channels * pt * p * p, (1, 1, 1))
        self.unstem = CausalUnpatchify(pt, p)
        # A stem's output is a linear function of one feature vector per block, which shows
        # as block seams; a small residual 3x3 pass at full resolution smooths them.
        self.refine = nn.Sequential(CausalConv3d(out_channels, refine, (1, 3, 3)), nn.SiLU(),
                                    CausalConv3d(refine, out_channels, (1, 3, 3))) if refine else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.post(self.up(self.mid(self.conv_in(z))))
        video = self.unstem(self.conv_out(F.silu(self.norm_out(h))))
        return video + self.refine(video) if self.refine is not None else video


@dataclass
class VAEOutput:
    reconstruction: torch.Tensor  # (B, C, T, H, W)
    latents: torch.Tensor  # (B, z, T', H', W'), what diffusion will model (before scaling)
    loss: torch.Tensor  # the bottleneck's term: beta * KL, or the quantiser's loss
    stats: dict


class VideoAutoencoder(nn.Module):
    """Causal video autoencoder with a KL, VQ or FSQ bottleneck.

    ``stem = (pt, p)`` first folds ``pt x p x p`` blocks into channels (causally; free, and
    it keeps convolutions off the full-resolution video). ``channels`` are the widths of
    the resolution levels after it: ``len(channels) - 1`` spatial 2x downsamplings, the
    first ``temporal_down`` of which also halve time. Total compression: time
    ``pt * 2**temporal_down``, space ``p * 2**(len(channels) - 1)``. ``z_channels`` is the
    latent width (for FSQ, ``len(fsq_levels)``). ``factorised`` uses (2+1)D convolutions;
    ``refine > 0`` adds a residual full-resolution 3x3 pass with that many channels;
    ``norm`` picks the normalisation (:class:`Norm`).

    ``latent_noise = g > 0`` trains the decoder on noised latents, ``z + tau std(z) eps`` with
    ``tau ~ U(0, g)`` per video (training only; the std is the batch's, detached, so the
    encoder cannot outgrow the noise by scaling its codes up). The encoder must then keep
    what tells two videos apart farther apart than the noise: a latent a diffusion model can
    get slightly wrong and still decode right (the "latent denoising tokenizer" idea, Yang
    et al., arXiv 2507.15856; a small cross and a small circle differ in a few latent cells,
    and a denoiser's error there turns one into the other).
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 64, 64), temporal_down: int = 2,
                 z_channels: int = 8, bottleneck: str = "kl", kl_weight: float = 1e-6, codebook_size: int = 512,
                 vq_beta: float = 0.25, fsq_levels: Sequence[int] = (8, 5, 5, 5), stem: Sequence[int] = (1, 1),
                 factorised: bool = True, refine: int = 0, norm: str = "channel", latent_noise: float = 0.0) -> None:
        super().__init__()
        if latent_noise < 0:
            raise ValueError(f"latent_noise must be >= 0, got {latent_noise}")
        self.latent_noise = latent_noise
        if bottleneck not in ("kl", "vq", "fsq"):
            raise ValueError(f"bottleneck must be 'kl', 'vq' or 'fsq', got {bottleneck!r}")
        if not 0 <= temporal_down <= len(channels) - 1:
            raise ValueError(f"temporal_down must be in [0, {len(channels) - 1}], got {temporal_down}")
        if bottleneck == "fsq":
            z_channels = len(fsq_levels)
        self.bottleneck, self.kl_weight = bottleneck, kl_weight
        self.in_channels, self.z_channels = in_channels, z_channels
        stem = tuple(stem)
        self.time_factor, self.space_factor = stem[0] * 2 ** temporal_down, stem[1] * 2 ** (len(channels) - 1)
        out = 2 * z_channels if bottleneck == "kl" else z_channels
        self.encoder = Encoder(in_channels, channels, temporal_down, out, stem, factorised, norm)
        self.decoder = Decoder(in_channels, channels, temporal_down, z_channels, stem, factorised, refine, norm)
        if bottleneck == "vq":
            self.quantizer = VectorQuantizer(codebook_size, z_channels, vq_beta)
        elif bottleneck == "fsq":
            self.quantizer = FSQ(fsq_levels)
        # Per-channel pixel statistics, set from data before training (see
        # `AutoencoderModule.on_fit_start`). Mostly-dark toy videos have a mean near -0.8;
        # without this the network spends hundreds of Adam steps just learning that offset.
        self.register_buffer("pixel_mean", torch.zeros(in_channels))
        self.register_buffer("pixel_std", torch.ones(in_channels))
        # 1 / std of the latents, set after training (latent diffusion's scale factor).
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def set_pixel_stats(self, video: torch.Tensor) -> None:
        """Standardise inputs (and de-standardise outputs) with this batch's per-channel stats."""
        self.check_video(video)
        dims = (0, 2, 3, 4)
        self.pixel_mean.copy_(video.mean(dims))
        self.pixel_std.copy_(video.std(dims).clamp_min(1e-3))

    def _normalise(self, video: torch.Tensor) -> torch.Tensor:
        return (video - self.pixel_mean[:, None, None, None]) / self.pixel_std[:, None, None, None]

    # --- shapes ---------------------------------------------------------------------------

    def latent_frames(self, frames: int) -> int:
        """Latent frames for a video of ``frames``: 1 for frame 0, then one per ``time_factor``."""
        return 1 + -(-(frames - 1) // self.time_factor)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(z, T', H', W')`` of the latent of one ``frames x height x width`` video (what a
        latent diffusion model samples)."""
        return (self.z_channels, self.latent_frames(frames), height // self.space_factor, width // self.space_factor)

    def check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(f"expected video (B, {self.in_channels}, T, H, W), got shape {tuple(video.shape)}")
        h, w = video.shape[-2:]
        if h % self.space_factor or w % self.space_factor:
            raise ValueError(f"H and W must be multiples of {self.space_factor} (the spatial compression), got {h}x{w}")

    def _pad_time(self, video: torch.Tensor) -> torch.Tensor:
        target = 1 + (self.latent_frames(video.shape[2]) - 1) * self.time_factor
        extra = target - video.shape[2]
        return torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2) if extra else video

    def fold_to_latent(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-pixel maps ``(B, K, T, H, W)`` -> ``(B, K, P, T', H/s, W/s)``: each latent
        cell's ``P = time_factor * s * s`` pixels side by side, with the encoder's own frame
        grouping (frame 0 alone, then ``time_factor`` frames a latent frame; the end padded
        with the last frame)."""
        if maps.ndim != 5:
            raise ValueError(f"expected maps (B, K, T, H, W), got shape {tuple(maps.shape)}")
        # the stem's own causal folding, at the whole compression: each cell's pixels in one row
        cells = CausalPatchify(self.time_factor, self.space_factor)(self._pad_time(maps))
        return cells.unflatten(1, (maps.shape[1], -1))

    def pool_to_latent(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-pixel maps ``(B, K, T, H, W)`` -> their mean over each latent cell's pixels
        ``(B, K, T', H/s, W/s)`` (:meth:`fold_to_latent`'s grouping)."""
        return self.fold_to_latent(maps).mean(2)

    def pool_frames(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps already on the latent's spatial grid ``(B, K, T, H', W')`` -> their mean over
        each latent frame's frames ``(B, K, T', H', W')`` (:meth:`fold_to_latent`'s grouping in
        time): the time half of :meth:`pool_to_latent`, for maps pooled in space their own way."""
        if maps.ndim != 5:
            raise ValueError(f"expected maps (B, K, T, H', W'), got shape {tuple(maps.shape)}")
        return torch.einsum("st,bkthw->bkshw", self.frame_weights(maps.shape[2]).to(maps), maps)

    def frame_weights(self, frames: int) -> torch.Tensor:
        """``(T', T)``: each latent frame's weights over the ``frames`` video frames it encodes,
        rows summing to 1 (frame 0 alone, then ``time_factor`` frames; the last group padded
        with the last frame, so that frame weighs more). A mean over each latent frame's
        frames is this matrix times the frame axis; its support is the grouping."""
        rows = torch.zeros(self.latent_frames(frames), frames)
        rows[0, 0] = 1.0
        for frame in range(1, 1 + (len(rows) - 1) * self.time_factor):  # the padded frames repeat the last
            rows[1 + (frame - 1) // self.time_factor, min(frame, frames - 1)] += 1.0 / self.time_factor
        return rows

    # --- encode / decode ------------------------------------------------------------------

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        return self.encoder(self._pad_time(self._normalise(video)))

    def encode(self, video: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """``video (B, C, T, H, W)`` -> latents ``(B, z, T', H/s, W/s)``: the KL mean (or a
        sample), or the quantised code."""
        h = self.encode_moments(video)
        if self.bottleneck == "kl":
            mean, logvar = h.chunk(2, dim=1)
            return mean + torch.randn_like(mean) * (0.5 * logvar.clamp(-30, 20)).exp() if sample else mean
        return self.quantizer(h).z_q

    def decode(self, latents: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Latents ``(B, z, T', H', W')`` -> video ``(B, C, 1 + s_t (T'-1), H, W)``, cropped to
        ``frames`` when given (the clip length before end padding)."""
        if latents.ndim != 5 or latents.shape[1] != self.z_channels:
            raise ValueError(f"expected latents (B, {self.z_channels}, T, H, W), got shape {tuple(latents.shape)}")
        video = self.decoder(latents) * self.pixel_std[:, None, None, None] + self.pixel_mean[:, None, None, None]
        return video[:, :, :frames] if frames is not None else video

    def forward(self, video: torch.Tensor) -> VAEOutput:
        h = self.encode_moments(video)
        stats = {}
        if self.bottleneck == "kl":
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30, 20)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
            loss = self.kl_weight * kl
            stats["kl"] = kl.detach()
        else:
            q = self.quantizer(h)
            z, loss = q.z_q, q.loss
            stats["perplexity"] = q.perplexity.detach()
        z_in = z
        if self.training and self.latent_noise > 0:
            tau = torch.rand(len(z), *([1] * (z.ndim - 1)), device=z.device) * self.latent_noise
            z_in = z + tau * z.detach().std() * torch.randn_like(z)
        return VAEOutput(self.decode(z_in, video.shape[2]), z, loss, stats)
