"""Bring your own model: external networks as denoisers ``D(x, sigma)`` in scoredyn's VE convention
(DESIGN.md §8), so every sampler, metric and dynamics tool applies to them.

* :class:`VPDenoiser`: discrete-timestep VP networks (DDPM, iDDPM, diffusers) predicting epsilon, v or x0;
* :class:`ContinuousVPDenoiser`: continuous-time VP networks (score_sde VP, EDM's VP parameterisation);
* :class:`ScoreDenoiser`: VE score networks (score_sde VE, NCSN): ``D = x + sigma^2 s``;
* :class:`EDMDenoiser`: EDM-style modules that return ``D`` itself;
* :class:`Affine`: a model trained on another data range;
* :func:`from_diffusers`, :func:`load_diffusers`: diffusers UNets and local ``save_pretrained`` folders.
"""

from .base import ExternalDenoiser
from .hub import MissingDependency, from_diffusers, load_diffusers
from .vp import ContinuousVPDenoiser, VPDenoiser
from .wrappers import Affine, EDMDenoiser, ScoreDenoiser

__all__ = [
    "Affine",
    "ContinuousVPDenoiser",
    "EDMDenoiser",
    "ExternalDenoiser",
    "MissingDependency",
    "ScoreDenoiser",
    "VPDenoiser",
    "from_diffusers",
    "load_diffusers",
]
