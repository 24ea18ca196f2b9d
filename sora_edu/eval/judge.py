"""A classifier as the judge of generated samples.

FID (Heusel et al., arXiv 1706.08500) compares the Gaussian statistics of Inception-v3
features of real and generated images. Inception weights would have to be downloaded,
and its ImageNet features say little about 16x16 digits or toy videos anyway, so we use
the same formula on the penultimate features of a small classifier trained on the very
world being generated (the cached ``vit_digits`` / ``vivit_motion`` models of notebooks
01-02). Numbers are comparable only between runs that use the same judge: this is a
Fréchet distance, not *the* FID.

The same classifier gives **per-class accuracy**: the fraction of samples generated for
class ``c`` that the judge puts in class ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for features ``(N, D)``, ``(M, D)``.

    ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of
    ``S_a^(1/2) S_b S_a^(1/2)`` (symmetric, so ``eigh`` is stable), computed in float64.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples on each side for a covariance")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)


@dataclass
class Judge:
    """A trained classifier network with ``features(x)`` and ``forward(x)``; ``size`` resizes
    inputs to what it was trained on (``(H, W)`` for images, ``(T, H, W)`` for videos)."""

    net: nn.Module
    size: tuple[int, ...] | None = None
    num_classes: int | None = None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None or tuple(x.shape[2:]) == tuple(self.size):
            return x
        if len(self.size) != x.ndim - 2:
            raise ValueError(f"this judge takes inputs with {len(self.size)} trailing axes, got shape {tuple(x.shape)}")
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return F.interpolate(x, size=self.size, mode=mode, align_corners=False)

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.net.eval()
        return torch.cat([fn(self.prepare(part)) for part in x.split(batch)])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._batched(self.net.features, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._batched(self.net, x).argmax(-1)

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Overall accuracy and per-class accuracy ``(num_classes,)`` (NaN for absent classes)."""
        pred = self.predict(x)
        right = (pred == labels.to(pred.device)).float()
        k = self.num_classes or int(labels.max()) + 1
        per = torch.full((k,), float("nan"))
        for c in range(k):
            mask = labels == c
            if mask.any():
                per[c] = right[mask].mean()
        return right.mean().item(), per

    def frechet(self, generated: torch.Tensor, real: torch.Tensor) -> float:
        return frechet_distance(self.features(generated), self.features(real))


JUDGES = {
    # name: (config that trains the classifier, its overrides, the size it judges at)
    "digits": ("vit_digits", (), (16, 16)),
    # 16-frame clips: the world's objects move a fixed fraction of the frame per frame, so
    # the judge must see clips about as long as the ones it judges (notebook 02's 8-frame
    # model calls 17-frame "up" clips right only 2/3 of the time).
    "motion": ("vivit_motion", ("--data.init_args.frames=16",), (16, 32, 32)),
}


def load_judge(name: str, *overrides: str) -> Judge:
    """The cached classifier of notebook 01 (``"digits"``) or 02 (``"motion"``, on 16-frame
    clips), trained now if the cache is empty."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; choose one of {sorted(JUDGES)}")
    from ..train.cached import load_or_train

    config, own, size = JUDGES[name]
    module = load_or_train(config, *own, *overrides, verbose=False)
    return Judge(module.net.eval(), size, module.hparams.num_classes)
