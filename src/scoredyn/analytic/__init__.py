"""Analytical denoisers (DESIGN.md §3): empirical, temperature-smoothed, noise-agnostic optima,
Gaussian (with closed-form teleportation) and Gaussian mixtures."""

from .base import AnalyticDenoiser

# TODO(integration): make these imports unconditional once every module has landed.
try:
    from .empirical import Empirical
except ImportError:  # pragma: no cover
    pass
try:
    from .noise_agnostic import NoiseAgnostic
except ImportError:  # pragma: no cover
    pass
try:
    from .gaussian import Gaussian
except ImportError:  # pragma: no cover
    pass
try:
    from .mixture import GaussianMixture
except ImportError:  # pragma: no cover
    pass
