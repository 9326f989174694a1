"""Denoising score matching in denoiser form (Karras et al. 2022, Eq. 2 and Eq. 8).

``L = E_{sigma, x0, z} w(sigma) |D(x0 + sigma z, sigma) - x0|^2 / d`` with the per-dimension mean.
Since ``score - target = (D - x0) / sigma^2``, a score-space weight ``lambda(sigma)`` is the
denoiser-space weight ``w = lambda / sigma^4``:

* ``sigma2``: ``lambda = sigma^2`` (NCSN, Kim, Zhou et al.), ``w = 1 / sigma^2``. For a
  multiplicative model this is ``|f(x) + z|^2``, for an unconditional one ``|sigma f(x) + z|^2``;
  the minimiser is the noise-agnostic optimum of DESIGN.md §3 (``scoredyn.analytic.NoiseAgnostic``)
  under the training sigma distribution.
* ``edm``: ``w = (sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, Table 1). A sigma-aware
  model minimises it at ``D = E[x0 | x]`` for every sigma (``scoredyn.analytic.Empirical`` on a
  finite training set), whatever the weight.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._checks import bcast
from ..nets.precondition import Preconditioned

WEIGHTINGS = ("sigma2", "edm")


def check_weighting(weighting: str) -> str:
    """Validate a weighting name."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    return weighting


def default_weighting(conditioning: str) -> str:
    """``edm`` for EDM preconditioning, ``sigma2`` (the papers' lambda = sigma^2) otherwise."""
    return "edm" if conditioning == "edm" else "sigma2"


def loss_weight(weighting: str, sigma: Tensor, sigma_data: float) -> Tensor:
    """The denoiser-space weight ``w(sigma)`` (B,)."""
    if weighting == "sigma2":
        return sigma.pow(-2)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoising_loss(model: Preconditioned, x0: Tensor, sigma: Tensor, noise: Tensor, weighting: str,
                   target: Optional[Tensor] = None) -> Tensor:
    """Per-sample losses (B,) at ``x = x0 + sigma * noise``; sigma is (B,) in ``x0``'s dtype.

    ``target``: the denoiser's regression target in place of ``x0`` (the tempered objective,
    :mod:`scoredyn.train.tempered`)."""
    d = model.denoise(x0 + bcast(sigma, x0) * noise, sigma).float()
    err = (d - (x0 if target is None else target).float()).square().flatten(1).mean(1)
    return loss_weight(weighting, sigma.float(), model.sigma_data) * err
