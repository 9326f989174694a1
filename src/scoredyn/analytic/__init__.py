"""Analytical denoisers (DESIGN.md §3): empirical, temperature-smoothed, noise-agnostic optima,
Zhou et al.'s tempered optimum, Gaussian (with closed-form teleportation) and Gaussian mixtures.
Each is a denoiser ``D(x, sigma)`` with ``.score(x, sigma)`` that follows the dtype and device of its data."""

from .base import AnalyticDenoiser
from .empirical import Empirical
from .gaussian import Gaussian
from .mixture import GaussianMixture
from .noise_agnostic import NoiseAgnostic
from .tempered import TemperedOptimum

__all__ = ["AnalyticDenoiser", "Empirical", "Gaussian", "GaussianMixture", "NoiseAgnostic", "TemperedOptimum"]
