"""Two-dimensional toy distributions (DESIGN.md §6), drawn deterministically from a seed.

Scaling: every toy is centred at its exact mean and multiplied by one isotropic factor so that the
average per-coordinate variance, ``trace(Cov) / 2``, is exactly 1 (the factor comes from the toy's
closed-form second moments, noise included), so the shapes keep their aspect ratio. ``rings`` and
``gmm2d`` have ``Cov = I``; ``checkerboard`` has unit variances and correlation 3/16 (the board's
pattern); ``moons`` has x std 1.23, y std 0.70; ``swissroll`` std 0.98 / 1.02.

Randomness: a ``numpy.random.Generator`` seeded with ``SeedSequence([seed, split])`` (split 0 =
train, 1 = test, so the test split is an independent draw from the same distribution) fills one
``(n, k)`` matrix of uniforms in row-major order, and row ``i`` alone determines sample ``i``.
Sample ``i`` therefore does not depend on ``n``: ``toy(n=500)`` is the first 500 rows of
``toy(n=1000)``. Global random state is never touched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from scipy.special import ndtri

if TYPE_CHECKING:  # the mixture module is imported lazily in gmm2d_model
    from scoredyn.analytic.mixture import GaussianMixture  # noqa: F401

SPLITS = {"train": 0, "test": 1}

_MOON_NOISE = 0.05
# Var of the raw moons: x = 3/4, y = 1/2 - 4/pi^2 + (4/pi - 1/2)^2 / 4 (outer/inner mixture), + noise
_MOON_SCALE = 1.0 / math.sqrt((0.75 + 0.5 - 4 / math.pi**2 + (4 / math.pi - 0.5) ** 2 / 4) / 2 + _MOON_NOISE**2)

_SWISS_NOISE = 0.5
# t ~ U(1.5 pi, 4.5 pi), (t cos t, t sin t): mean (2, 2/(3 pi)), E|x|^2 = E[t^2] = 9.75 pi^2
_SWISS_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_SWISS_SCALE = 1.0 / math.sqrt((9.75 * math.pi**2 - _SWISS_MEAN[0] ** 2 - _SWISS_MEAN[1] ** 2) / 2 + _SWISS_NOISE**2)

_RING_NOISE = 0.05
# radii c, 2c, 3c, 4c equally likely: per-coordinate variance E[r^2]/2 + noise^2 = 3.75 c^2 + noise^2 = 1
_RING_UNIT = math.sqrt((1.0 - _RING_NOISE**2) / 3.75)

_GMM_K = 8
_GMM_STD_RADIAL = 0.10
_GMM_STD_TANGENTIAL = 0.25
# trace(Cov)/2 = R^2/2 + (s_r^2 + s_t^2)/2 = 1
_GMM_RADIUS = math.sqrt(2.0 - _GMM_STD_RADIAL**2 - _GMM_STD_TANGENTIAL**2)


def _normal(u: np.ndarray) -> np.ndarray:
    return ndtri(u)


def _moons(u: np.ndarray) -> np.ndarray:
    t = math.pi * u[:, 1]
    outer = u[:, 0] < 0.5
    x = np.where(outer, np.cos(t), 1.0 - np.cos(t))
    y = np.where(outer, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], 1) + _MOON_NOISE * _normal(u[:, 2:4])
    return (pts - np.array([0.5, 0.25])) * _MOON_SCALE


def _swissroll(u: np.ndarray) -> np.ndarray:
    t = 1.5 * math.pi * (1.0 + 2.0 * u[:, 0])
    pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) + _SWISS_NOISE * _normal(u[:, 1:3])
    return (pts - np.array(_SWISS_MEAN)) * _SWISS_SCALE


def _checkerboard(u: np.ndarray) -> np.ndarray:
    # the 8 dark squares of a 4x4 board on [-2, 2]^2 (FFJORD's checkerboard); uniform marginals, Var = 4/3
    x1 = 4.0 * u[:, 0] - 2.0
    x2 = u[:, 1] - 2.0 * (u[:, 2] < 0.5) + np.mod(np.floor(x1), 2.0)
    return np.stack([x1, x2], 1) * (math.sqrt(3.0) / 2.0)


def _rings(u: np.ndarray) -> np.ndarray:
    radius = _RING_UNIT * (1.0 + np.minimum(np.floor(4.0 * u[:, 0]), 3.0))
    theta = 2.0 * math.pi * u[:, 1]
    return radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1) + _RING_NOISE * _normal(u[:, 2:4])


def gmm2d_parameters(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights ``(K,)``, means ``(K, 2)`` and full covariances ``(K, 2, 2)`` of the ``gmm2d`` toy.

    Eight equally weighted Gaussians on a circle of radius ``sqrt(2 - 0.1^2 - 0.25^2)``, each with
    std 0.1 along the radius and 0.25 along the circle; the mixture has mean 0 and covariance I.
    """
    theta = torch.arange(_GMM_K, dtype=torch.float64) * (2.0 * math.pi / _GMM_K)
    radial = torch.stack([theta.cos(), theta.sin()], 1)
    tangential = torch.stack([-theta.sin(), theta.cos()], 1)
    covs = (
        _GMM_STD_RADIAL**2 * radial[:, :, None] * radial[:, None, :]
        + _GMM_STD_TANGENTIAL**2 * tangential[:, :, None] * tangential[:, None, :]
    )
    weights = torch.full((_GMM_K,), 1.0 / _GMM_K, dtype=torch.float64)
    return weights.to(dtype), (_GMM_RADIUS * radial).to(dtype), covs.to(dtype)


def gmm2d_model(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "GaussianMixture":
    """The exact :class:`~scoredyn.analytic.mixture.GaussianMixture` that ``load("gmm2d")`` samples from."""
    from scoredyn.analytic.mixture import GaussianMixture

    w, mu, cov = gmm2d_parameters(torch.float64)
    return GaussianMixture(w.to(device, dtype), mu.to(device, dtype), cov.to(device, dtype))


def _gmm2d(u: np.ndarray) -> np.ndarray:
    w, mu, cov = (t.numpy() for t in gmm2d_parameters(torch.float64))
    k = np.minimum(np.searchsorted(np.cumsum(w), u[:, 0], side="right"), len(w) - 1)
    chol = np.linalg.cholesky(cov)
    z = _normal(u[:, 1:3])
    return mu[k] + np.einsum("nij,nj->ni", chol[k], z)


# name -> (number of uniforms per sample, map from (n, k) uniforms to (n, 2) points)
TOYS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "moons": (4, _moons),
    "swissroll": (3, _swissroll),
    "checkerboard": (3, _checkerboard),
    "rings": (4, _rings),
    "gmm2d": (3, _gmm2d),
}
DEFAULT_N = 2000


def sample_toy(name: str, n: int | None = None, seed: int = 0, split: str = "train") -> torch.Tensor:
    """``n`` (default 2000) float32 points ``(n, 2)`` of toy ``name``; see the module docstring for seeding."""
    k, fn = TOYS[name]
    n = DEFAULT_N if n is None else n
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split]]))
    # uniforms strictly inside (0, 1) so that the inverse normal CDF stays finite
    u = rng.random((n, k)) + 2.0**-54
    return torch.from_numpy(fn(u)).to(torch.float32)
