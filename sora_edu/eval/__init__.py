"""Judging generated samples without Inception weights (nothing is downloaded here).

:mod:`.judge`: Fréchet distance on the features of a small classifier trained on the same
world, and per-class accuracy of generated samples as that classifier sees them.
:mod:`.world_score`: the analytic world-truth scorer: which shape, colour, size, motion
and background a one-object Shapes-world video shows, against what its prompt asked.
"""

from .judge import Judge, frechet_distance, load_judge
from .world_score import adherence, describe, score

__all__ = ["Judge", "adherence", "describe", "frechet_distance", "load_judge", "score"]
