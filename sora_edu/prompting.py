"""Every way Sora is prompted, with one text-to-video model (notebook 09).

Sora's report, "prompting with images and videos": animate an image, extend a video
forward or backward in time, connect two videos, loop one, edit one with a prompt (SDEdit,
Meng et al., arXiv 2108.01073), and make images, at any size the model takes (widescreen,
vertical, square).

    pipe = VideoPipeline(load_or_train("t2v_prompting"))
    video = pipe.text_to_video("a small red circle moves left across a navy background")
    video = pipe.image_to_video(image, "a small red circle moves up across a navy background")
    longer = pipe.extend(video, frames=8, prompt=..., direction="backward")
    both = pipe.connect(video_a, video_b, frames=8, prompt=...)
    looped = pipe.loop(video, frames=8, prompt=...)
    edited = pipe.edit(video, "a small blue circle moves left across a navy background", strength=0.6)
    image = pipe.text_to_image("a large white cross on a black background", height=48, width=96)

How frames are given. The model works on latents of a *causal* VAE: latent frame 0 encodes
pixel frame 0 alone and latent frame ``j`` the frames ``4j-3 .. 4j``, each from its past
only. So giving the first ``1 + 4p`` pixel frames of a window gives its first ``1 + p``
latent frames exactly (encode them alone: the rest cannot change them); frames given at
the *end* of a window are encoded in a window whose unknown frames hold the nearest given
frame, an approximation (the encoder's receptive field in time is a few frames). A model
trained with ``frame_masks`` (``t2v_prompting.yaml``) sees the given latent frames clean
with a mask channel; any other text-to-video model gets them by replacement at every step
(:meth:`~sora_edu.train.diffusion.DiffusionModule.sample`). Given latent frames never
change; what the modes return keeps the input videos' own pixels (``extend``, ``connect``,
``loop``), and ``image_to_video``'s first frame is the image through the VAE.

Layouts: videos ``(B, 3, T, H, W)`` or ``(3, T, H, W)`` in [-1, 1]; images ``(B, 3, H, W)``
or ``(3, H, W)``. Every method returns a batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def _batch(x: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    if x.ndim == ndim - 1:
        x = x[None]
    if x.ndim != ndim or x.shape[1] != 3:
        layout = "(B, 3, T, H, W)" if ndim == 5 else "(B, 3, H, W)"
        raise ValueError(f"expected {name} {layout} (or without B) in [-1, 1], got shape {tuple(x.shape)}")
    return x.float()


class VideoPipeline:
    """Text, image and video prompting around a text-to-video
    :class:`~sora_edu.train.diffusion.DiffusionModule` (with its VAE).

    Args:
        module: the trained text-to-video module.
        steps, guidance: sampler steps (Euler, rectified flow) and classifier-free guidance.
        window: the longest clip generated at once, in frames (the model's training length;
            longer extensions are made window by window).
    """

    def __init__(self, module, steps: int = 20, guidance: float = 4.0, window: int = 16) -> None:
        if not getattr(module, "is_text", False) or module.vae is None:
            raise ValueError("VideoPipeline needs a text-conditional latent DiffusionModule (e.g. t2v.yaml's)")
        self.module, self.vae = module.eval(), module.vae
        self.steps, self.guidance, self.window = steps, guidance, window
        self.time = self.vae.time_factor
        self.step = self.vae.space_factor * module.net.size_multiple

    # --- plumbing ---------------------------------------------------------------------------

    def check_size(self, height: int, width: int) -> None:
        """Any height and width that are positive multiples of the VAE's compression times the
        network's own multiple (a DiT's patch; 16 for the t2v models): square, widescreen and vertical alike."""
        if height < self.step or width < self.step or height % self.step or width % self.step:
            raise ValueError(f"this model makes frames whose height and width are multiples of {self.step} "
                             f"(VAE {self.vae.space_factor}x times the network's {self.module.net.size_multiple}); "
                             f"got {height}x{width}")

    def prompts(self, prompt: str | Sequence[str], n: int) -> list[str]:
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} videos")
        for p in prompts:
            unknown = self.module.tokenizer.unknown(p)
            if unknown:
                raise ValueError(f"unknown words {unknown} in prompt {p!r}; the model knows the Shapes world's words")
        return prompts

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, T, H, W)`` -> latents in the denoiser's space."""
        return self.module.encode(video)

    def decode(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        return self.module.decode(z, frames).cpu()

    def _sample(self, prompts: list[str], shape: tuple, seed: int, **kwargs) -> torch.Tensor:
        kwargs.setdefault("steps", self.steps)
        kwargs.setdefault("guidance", self.guidance)
        return self.module.sample(shape, prompts, seed=seed, **kwargs)

    def _window(self, prompts: list[str], frames: int, known: torch.Tensor, given: torch.Tensor,
                seed: int) -> torch.Tensor:
        """Generate ``frames``-frame windows in which the pixel frames ``given[:, :, i]``
        with ``known[i]`` are prescribed; returns the decoded windows."""
        b, _, _, h, w = given.shape
        shape = (b, *self.vae.latent_shape(frames, h, w))
        idx = torch.arange(frames)
        # Unknown frames hold the nearest known one, so a latent at the end sees plausible context.
        known_idx = idx[known]
        nearest = known_idx[(idx[:, None] - known_idx[None]).abs().argmin(1)]
        # Causal: latents of a given prefix see only given frames, so they come out exact.
        z = self.encode(given[:, :, nearest])
        # Latent frame j covers pixel frames 4j-3 .. 4j (frame 0 alone); it is given if all of them are.
        lat = torch.tensor([bool(known[0])] + [bool(known[max(1, self.time * j - self.time + 1):min(frames, self.time * j + 1)].all())
                                                for j in range(1, shape[2])])
        mask = lat[None].expand(b, -1)
        if mask.all():
            raise ValueError("every latent frame of the window is given: nothing to generate")
        out = self._sample(prompts, shape, seed, given=z, mask=mask)
        return self.decode(out, frames)

    # --- the modes ------------------------------------------------------------------------------

    def text_to_video(self, prompt: str | Sequence[str], frames: int = 16, height: int = 64, width: int = 64,
                      n: int = 1, seed: int = 0) -> torch.Tensor:
        """``n`` videos ``(n, 3, frames, height, width)`` for a prompt (or one per prompt)."""
        self.check_size(height, width)
        prompts = self.prompts(prompt, n if isinstance(prompt, str) else len(prompt))
        z = self._sample(prompts, (len(prompts), *self.vae.latent_shape(frames, height, width)), seed)
        return self.decode(z, frames)

    def text_to_image(self, prompt: str | Sequence[str], height: int = 64, width: int = 64, n: int = 1,
                      seed: int = 0) -> torch.Tensor:
        """Images ``(n, 3, height, width)``: a one-frame video (the model trained on images too)."""
        return self.text_to_video(prompt, 1, height, width, n, seed)[:, :, 0]

    def image_to_video(self, image: torch.Tensor, prompt: str | Sequence[str], frames: int = 16,
                       seed: int = 0) -> torch.Tensor:
        """Animate ``image``: a video whose first frame is the image."""
        image = _batch(image, 4, "image")
        self.check_size(*image.shape[-2:])
        given = image[:, :, None].expand(-1, -1, frames, -1, -1).clone()
        known = torch.zeros(frames, dtype=torch.bool)
        known[0] = True
        return self._window(self.prompts(prompt, len(image)), frames, known, given, seed)

    def extend(self, video: torch.Tensor, frames: int, prompt: str | Sequence[str], direction: str = "forward",
               seed: int = 0, context: int = 5) -> torch.Tensor:
        """``video`` with ``frames`` new frames after it (``forward``) or before it
        (``backward``), made window by window, each conditioned on ``context`` frames of
        what is already there (forward: ``1 + 4p`` frames, so their latents are exact)."""
        video = _batch(video, 5, "video")
        self.check_size(*video.shape[-2:])
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        prompts = self.prompts(prompt, len(video))
        out, k = video.cpu(), 0
        while frames > 0:
            if direction == "forward":
                ctx = 1 + self.time * max(0, (min(context, out.shape[2]) - 1) // self.time)
                new = min(frames, self.window - ctx)
                span = ctx + self.time * math.ceil(new / self.time)
                given = torch.cat([out[:, :, -ctx:], out[:, :, -1:].expand(-1, -1, span - ctx, -1, -1)], 2)
                known = torch.arange(span) < ctx
                window = self._window(prompts, span, known, given, seed + k)
                out = torch.cat([out, window[:, :, ctx:ctx + new]], 2)
            else:
                ctx = self.time * max(1, min(context, out.shape[2]) // self.time)
                new = min(frames, self.window - ctx)
                span = 1 + self.time * math.ceil((new - 1) / self.time) + ctx if new > 1 else 1 + ctx
                lead = span - ctx
                given = torch.cat([out[:, :, :1].expand(-1, -1, lead, -1, -1), out[:, :, :ctx]], 2)
                known = torch.arange(span) >= lead
                window = self._window(prompts, span, known, given, seed + k)
                out = torch.cat([window[:, :, lead - new:lead], out], 2)
            frames, k = frames - new, k + 1
        return out

    def connect(self, video_a: torch.Tensor, video_b: torch.Tensor, frames: int, prompt: str | Sequence[str],
                seed: int = 0) -> torch.Tensor:
        """``a``, then ``frames`` generated frames (a multiple of 4), then ``b``: the middle
        is generated with the end of ``a`` (5 frames) and the start of ``b`` (4) given."""
        a, b = _batch(video_a, 5, "video_a"), _batch(video_b, 5, "video_b")
        if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
            raise ValueError(f"connect needs videos of one batch and size, got {tuple(a.shape)} and {tuple(b.shape)}")
        self.check_size(*a.shape[-2:])
        if frames < self.time or frames % self.time:
            raise ValueError(f"frames (the transition) must be a positive multiple of {self.time}, got {frames}")
        head, tail = 1 + self.time, self.time
        if a.shape[2] < head or b.shape[2] < tail:
            raise ValueError(f"connect needs at least {head} frames of video_a and {tail} of video_b")
        span = head + frames + tail
        middle = a[:, :, -1:].expand(-1, -1, frames, -1, -1)
        given = torch.cat([a[:, :, -head:], middle, b[:, :, :tail]], 2)
        known = (torch.arange(span) < head) | (torch.arange(span) >= head + frames)
        window = self._window(self.prompts(prompt, len(a)), span, known, given, seed)
        return torch.cat([a.cpu(), window[:, :, head:head + frames], b.cpu()], 2)

    def loop(self, video_or_prompt: torch.Tensor | str, frames: int = 8, prompt: str | Sequence[str] | None = None,
             seed: int = 0, **size) -> torch.Tensor:
        """A seamless loop: the video (or one made from the prompt) plus ``frames`` generated
        frames that lead from its end back to its first frame, so it can play forever."""
        if isinstance(video_or_prompt, str):
            prompt = video_or_prompt if prompt is None else prompt
            video_or_prompt = self.text_to_video(video_or_prompt, seed=seed, **size)
        if prompt is None:
            raise ValueError("loop(video) needs the prompt that describes it")
        video = _batch(video_or_prompt, 5, "video")
        joined = self.connect(video, video, frames, prompt, seed)
        return joined[:, :, :video.shape[2] + frames]

    def edit(self, video: torch.Tensor, prompt: str | Sequence[str], strength: float = 0.6,
             seed: int = 0) -> torch.Tensor:
        """SDEdit: noise the video's latents to time ``strength`` and denoise them under the
        new prompt. 0 returns the input (through the VAE), 1 ignores it."""
        video = _batch(video, 5, "video")
        self.check_size(*video.shape[-2:])
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        z = self.encode(video)
        out = self._sample(self.prompts(prompt, len(video)), tuple(z.shape), seed, start=z, t_start=strength)
        return self.decode(out, video.shape[2])


__all__ = ["VideoPipeline"]
