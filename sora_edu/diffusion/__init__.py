"""Diffusion and flow matching, model-agnostic: any ``model(x, t, cond)`` works.

* :mod:`.schedule`: noise schedules (linear, cosine) and SNR helpers;
* :mod:`.process`: the forward process ``q_sample`` and the training objectives
  (epsilon, x0, v prediction; rectified-flow velocity) behind one :class:`Diffusion`;
* :mod:`.samplers`: DDPM ancestral, DDIM (with eta), Euler and Heun for flow, and
  classifier-free guidance;
* :mod:`.embedding`: the sinusoidal timestep embedding.
"""

from .embedding import TimestepEmbedder, timestep_embedding
from .process import OBJECTIVES, Diffusion
from .samplers import SAMPLERS, classifier_free_guidance, sample
from .schedule import NoiseSchedule

__all__ = ["Diffusion", "NoiseSchedule", "OBJECTIVES", "SAMPLERS", "TimestepEmbedder", "classifier_free_guidance",
           "sample", "timestep_embedding"]
