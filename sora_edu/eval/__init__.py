"""Judging generated samples without Inception weights (nothing is downloaded here).

:mod:`.judge`: Fréchet distance on the features of a small classifier trained on the same
world, and per-class accuracy of generated samples as that classifier sees them.
"""

from .judge import Judge, frechet_distance, load_judge

__all__ = ["Judge", "frechet_distance", "load_judge"]
