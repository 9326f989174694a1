"""Analytical denoisers (DESIGN.md §3): empirical, temperature-smoothed, noise-agnostic optima,
Gaussian (with closed-form teleportation) and Gaussian mixtures. Each is a denoiser ``D(x, sigma)``
with ``.score(x, sigma)`` that follows the dtype and device of its data."""

from .base import AnalyticDenoiser
from .empirical import Empirical
from .gaussian import Gaussian
from .mixture import GaussianMixture
from .noise_agnostic import NoiseAgnostic

__all__ = ["AnalyticDenoiser", "Empirical", "Gaussian", "GaussianMixture", "NoiseAgnostic"]
