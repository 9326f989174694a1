"""Fréchet distance (FID) and kernel distance (KID) between feature sets (DESIGN.md §5).

Feed features from :func:`scoredyn.metrics.features`. A value is comparable only with values from
the same feature network, the same sample counts and the same preprocessing (DESIGN.md §8): see
:data:`scoredyn.metrics.features.FEATURE_NOTE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_count
from .._result import Result
from .distances import as_pair, mmd2_unbiased, polynomial_kernel


def gaussian_moments(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``feats (n, d)``, in float64."""
    f = feats.reshape(feats.shape[0], -1).to(torch.float64)
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _psd_sqrt(cov: Tensor) -> Tensor:
    lam, vec = torch.linalg.eigh((cov + cov.T) / 2)
    return (vec * lam.clamp_min(0).sqrt()) @ vec.T


def frechet_distance(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`` (Heusel et al. 2017, eq. 6).

    ``tr((C_a C_b)^{1/2})`` equals ``tr((C_a^{1/2} C_b C_a^{1/2})^{1/2})``, the trace of the square root
    of a symmetric PSD matrix: both square roots come from float64 eigendecompositions with
    eigenvalues clamped at 0, so there is no complex part to discard (``scipy.linalg.sqrtm`` of the
    non-symmetric product returns small imaginary parts that other implementations drop).
    """
    mu_a, mu_b = mu_a.to(torch.float64), mu_b.to(torch.float64)
    cov_a, cov_b = cov_a.to(torch.float64), cov_b.to(torch.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"moments have shapes mu_a {tuple(mu_a.shape)}, cov_a {tuple(cov_a.shape)}, mu_b {tuple(mu_b.shape)}, "
            f"cov_b {tuple(cov_b.shape)}; expected ({d},) and ({d}, {d})"
        )
    root_a = _psd_sqrt(cov_a)
    m = root_a @ cov_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    value = ((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * tr_sqrt
    return float(value)


def fid(samples: Tensor, reference: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, d)``, ``(m, d)``.

    The plug-in estimate is biased upwards by roughly ``tr`` terms of order ``d / n``: compare values
    only at equal sample counts (DESIGN.md §8).
    """
    A, B = as_pair("samples", samples, "reference", reference)
    return frechet_distance(*gaussian_moments(A), *gaussian_moments(B))


@dataclass(frozen=True)
class KID(Result):
    """Kernel inception distance: the mean unbiased ``MMD^2`` over subsets and its standard deviation."""

    mean: float
    std: float


def kid(
    samples: Tensor, reference: Tensor, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> KID:
    """Kernel inception distance (Bińkowski et al. 2018, §4): unbiased ``MMD^2`` with the cubic kernel
    ``(x.y/d + 1)^3``, averaged over ``n_subsets`` random subsets of ``min(subset_size, n, m)`` points
    of each set drawn without replacement.

    Returns :class:`KID` ``(mean, std)`` over subsets (``std`` with Bessel's correction; ``0`` for one subset).
    Subsets come from ``torch.Generator().manual_seed(seed)`` on the CPU (the same on every device).
    """
    A, B = as_pair("samples", samples, "reference", reference)
    n_subsets = check_count("n_subsets", n_subsets)
    subset_size = check_count("subset_size", subset_size, least=2)
    size = min(subset_size, A.shape[0], B.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(n_subsets):
        ia = torch.randperm(A.shape[0], generator=gen)[:size].to(A.device)
        ib = torch.randperm(B.shape[0], generator=gen)[:size].to(B.device)
        values.append(mmd2_unbiased(A[ia], B[ib], polynomial_kernel))
    v = torch.stack(values)
    std = v.std() if n_subsets > 1 else v.new_zeros(())
    return KID(mean=float(v.mean()), std=float(std))
