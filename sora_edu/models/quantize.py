"""Discrete bottlenecks: a vector quantiser (VQ-VAE) and finite scalar quantisation (FSQ).

* VQ ("Neural Discrete Representation Learning", van den Oord et al., arXiv 1711.00937):
  each latent vector ``z`` is replaced by its nearest codebook entry ``e_k``. The encoder
  gets gradients by the straight-through estimator ``z_q = z + sg(e_k - z)``; a
  commitment loss ``beta * ||z - sg(e_k)||^2`` keeps ``z`` near its code. The codebook
  itself is learned by exponential moving averages of the vectors assigned to each code
  (the paper's appendix; VQ-VAE-2, arXiv 1906.00446), and codes nobody uses are restarted
  on random encoder outputs, the usual cure for codebook collapse.
* FSQ ("Finite Scalar Quantization: VQ-VAE Made Simple", Mentzer et al., arXiv 2309.15505):
  bound each of a few channels and round it to one of ``L_i`` levels; the implicit
  codebook is the grid of ``prod(L_i)`` points, no codebook loss, no collapse.

Layout: latents ``z: (B, D, *grid)`` channels first (``grid`` = ``(T, H, W)`` or ``(H, W)``);
indices ``(B, *grid)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, D, *grid), straight-through
    indices: torch.Tensor  # (B, *grid)
    loss: torch.Tensor  # scalar: what the quantiser adds to the training loss
    perplexity: torch.Tensor  # exp(entropy) of this batch's code use: the effective codebook size


def _flatten(z: torch.Tensor) -> tuple[torch.Tensor, str, dict]:
    if z.ndim < 3:
        raise ValueError(f"expected latents (B, D, *grid), got shape {tuple(z.shape)}")
    names = " ".join(f"g{i}" for i in range(z.ndim - 2))
    sizes = {f"g{i}": s for i, s in enumerate(z.shape[2:])}
    return rearrange(z, f"b d {names} -> (b {names}) d"), names, sizes


def _perplexity(counts: torch.Tensor) -> torch.Tensor:
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with EMA codebook updates and dead-code restarts.

    ``usage()`` reports the fraction of codes used since the last ``reset_usage()``.
    """

    def __init__(self, codebook_size: int = 512, dim: int = 8, beta: float = 0.25, decay: float = 0.99,
                 restart_threshold: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"need codebook_size >= 2 and dim >= 1, got {codebook_size} and {dim}")
        self.codebook_size, self.dim, self.beta, self.decay = codebook_size, dim, beta, decay
        self.restart_threshold, self.eps = restart_threshold, eps
        self.register_buffer("codebook", torch.randn(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("used", torch.zeros(codebook_size))
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the closest code for each row of ``flat (N, D)``."""
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None])
        return d.argmin(dim=1)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        if not bool(self.initialised):
            # Start the codebook on real encoder outputs, not on noise far from them.
            pick = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
            self.codebook.copy_(flat[pick])
            self.embed_sum.copy_(flat[pick])
            self.initialised.fill_(True)
            idx = self.nearest(flat)
        onehot = F.one_hot(idx, self.codebook_size).type_as(flat)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / size[:, None])
        dead = self.cluster_size < self.restart_threshold
        if dead.any():
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.embed_sum[dead] = flat[pick]
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.shape[1] != self.dim:
            raise ValueError(f"expected latents (B, {self.dim}, *grid), got shape {tuple(z.shape)}")
        flat, names, sizes = _flatten(z)
        idx = self.nearest(flat.detach())
        if self.training:
            self._update(flat.detach().float(), idx)
            idx = self.nearest(flat.detach())
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        self.used += counts
        q = self.codebook[idx]
        loss = self.beta * F.mse_loss(flat, q.detach())  # commitment; the codebook learns by EMA
        q = flat + (q - flat).detach()  # straight-through: forward = code, backward = identity
        z_q = rearrange(q, f"(b {names}) d -> b d {names}", **sizes)
        return QuantizerOutput(z_q, idx.reshape(z.shape[0], *z.shape[2:]), loss, _perplexity(counts))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices (B, *grid)`` -> latents ``(B, D, *grid)``."""
        return torch.movedim(self.codebook[indices], -1, 1)

    def usage(self) -> float:
        return (self.used > 0).float().mean().item()

    def reset_usage(self) -> None:
        self.used.zero_()


class FSQ(nn.Module):
    """Finite scalar quantisation with ``levels`` per channel; ``dim = len(levels)``.

    Each channel is squashed to its range with ``tanh`` and rounded (straight-through).
    Odd and even level counts both work: even ones are offset by half a step.
    """

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5)) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"levels must be integers >= 2, got {levels}")
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.dim, self.codebook_size = len(levels), int(torch.tensor(levels).prod())
        self.register_buffer("used", torch.zeros(self.codebook_size))

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        half = (self.levels - 1) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.shape[1] != self.dim:
            raise ValueError(f"expected latents (B, {self.dim}, *grid), got shape {tuple(z.shape)}")
        flat, names, sizes = _flatten(z)
        bounded = self._bound(flat)
        rounded = bounded + (bounded.round() - bounded).detach()
        half = (self.levels // 2).to(flat)
        q = rounded / half  # codes in [-1, 1]
        digits = (rounded.round() + half).long()  # 0 .. L-1 per channel
        idx = (digits * self.basis).sum(-1)
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        self.used += counts
        z_q = rearrange(q, f"(b {names}) d -> b d {names}", **sizes)
        return QuantizerOutput(z_q, idx.reshape(z.shape[0], *z.shape[2:]), flat.new_zeros(()), _perplexity(counts))

    def usage(self) -> float:
        return (self.used > 0).float().mean().item()

    def reset_usage(self) -> None:
        self.used.zero_()
