"""Noise schedules: how much signal is left at each of ``T`` discrete steps.

``alpha_bar[t]`` is the fraction of signal *variance* left at step ``t`` (0 = almost clean,
``T - 1`` = almost pure noise): ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``.

* ``"linear"``: betas from 1e-4 to 0.02 (DDPM, Ho et al., arXiv 2006.11239), scaled so any
  ``T`` spans the same range;
* ``"cosine"``: ``alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)`` (improved DDPM, Nichol &
  Dhariwal, arXiv 2102.09672), which destroys information more evenly over ``t``: the
  linear schedule is nearly pure noise for its last third, at low resolution especially.

The signal-to-noise ratio ``SNR = alpha_bar / (1 - alpha_bar)`` is what the objectives and
the v-parameterisation (arXiv 2202.00512) are written in.
"""

from __future__ import annotations

import math

import torch


class NoiseSchedule:
    def __init__(self, kind: str = "cosine", steps: int = 1000) -> None:
        if kind not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")
        if steps < 2:
            raise ValueError(f"need at least 2 steps, got {steps}")
        self.kind, self.steps = kind, steps
        if kind == "linear":
            scale = 1000 / steps
            betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
            alpha_bar = torch.cumprod(1 - betas, 0)
        else:
            s = torch.arange(steps + 1, dtype=torch.float64) / steps
            f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            alpha_bar = (f[1:] / f[0]).clamp(min=1e-5)  # keep the last step finitely noisy
        self.alpha_bar = alpha_bar.float()

    def check(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.min() < 0 or t.max() >= self.steps:
            raise ValueError(f"timesteps must be integers in [0, {self.steps}), got {t.tolist() if t.numel() < 9 else t}")
        return t

    def at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` shaped to broadcast against ``like (B, ...)``."""
        a = self.alpha_bar.to(like.device)[self.check(t).to(like.device)]
        return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[self.check(t)]
        return a / (1 - a)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.snr(t).log()
