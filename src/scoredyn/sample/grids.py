"""Noise-level grids (descending, float64 by default) and NCSNv2's schedule rules.

* ``sigmas_karras``: Karras et al. 2022 (EDM), Eq. 5, ``rho = 7``, plus a trailing 0.
* ``sigmas_geometric``: the NCSN grid ``exp(linspace(log sigma_1, log sigma_L, L))``, no trailing 0.
* ``sigmas_loglinear``: the same geometric spacing plus a trailing 0 (k-diffusion's "exponential").
* ``ncsn_schedule``: Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative
  Models" (NCSNv2, arXiv:2006.09011), Techniques 1, 2 and 4.

k-diffusion builds its Karras grid in float32 (DESIGN.md §8); these default to float64.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .._checks import check_count, check_data, check_positive, check_range

Device = Union[str, torch.device, None]


def _zero(s: Tensor) -> Tensor:
    return torch.cat([s, s.new_zeros(1)])


def sigmas_karras(
    n: int, *, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Device = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Karras et al. 2022, Eq. 5: ``(s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``i < n``, then 0."""
    n = check_count("n", n)
    lo, hi = check_range(sigma_min, sigma_max)
    rho = check_positive("rho", rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    s[0], s[-1] = hi, (lo if n > 1 else hi)
    return _zero(s).to(device=device, dtype=dtype)


def sigmas_geometric(
    n: int, *, sigma_min: float, sigma_max: float, device: Device = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """NCSN's geometric grid of ``n`` levels from ``sigma_max`` down to ``sigma_min`` (exact endpoints, no 0)."""
    n = check_count("n", n, least=2)
    lo, hi = check_range(sigma_min, sigma_max)
    s = torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64).exp()
    s[0], s[-1] = hi, lo
    return s.to(device=device, dtype=dtype)


def sigmas_loglinear(
    n: int, *, sigma_min: float, sigma_max: float, device: Device = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` log-uniform levels from ``sigma_max`` to ``sigma_min``, then 0 (k-diffusion's exponential grid)."""
    return _zero(sigmas_geometric(n, sigma_min=sigma_min, sigma_max=sigma_max, dtype=torch.float64)).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- NCSNv2 schedule


def max_pairwise_distance(data: Tensor, chunk_size: int = 2048) -> float:
    """The largest Euclidean distance between two rows of ``data`` (NCSNv2 Technique 1), exactly.

    Rows are screened in chunks with the Gram identity in float64; every row whose screened maximum
    is within the identity's rounding bound of the best is then re-measured by direct differences,
    so the result does not suffer the identity's cancellation. Memory is ``chunk_size x N``.
    """
    data = check_data("data", data, min_points=2)
    chunk_size = check_count("chunk_size", chunk_size)
    flat = data.reshape(data.shape[0], -1).to(torch.float64)
    sq = (flat * flat).sum(1)
    row_max = torch.empty_like(sq)
    for a in range(0, flat.shape[0], chunk_size):
        blk = flat[a : a + chunk_size]
        d2 = sq[a : a + chunk_size, None] - 2.0 * (blk @ flat.T) + sq[None, :]
        row_max[a : a + chunk_size] = d2.amax(1)
    best = float(row_max.max())
    # |Gram error| <= ~ (d + 2) eps (|a|^2 + |b|^2); the true best row is within twice that of `best`.
    slack = 4.0 * (flat.shape[1] + 2) * torch.finfo(torch.float64).eps * 2.0 * float(sq.max()) + 1e-300
    rows = torch.nonzero(row_max >= best - slack).flatten().tolist()
    exact = max(float(((flat - flat[i]) ** 2).sum(1).max()) for i in rows)
    return math.sqrt(exact)


def ncsn_overlap(gamma: float, dim: int) -> float:
    """NCSNv2 §3.2: ``Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma)``, the overlap
    of consecutive noise shells for ``gamma = sigma_{i-1}/sigma_i`` and data dimension ``D``."""
    c = math.sqrt(2.0 * dim)
    return _phi(c * (gamma - 1) + 3 * gamma) - _phi(c * (gamma - 1) - 3 * gamma)


def ncsn_gamma(dim: int, overlap: float = 0.5) -> float:
    """NCSNv2 Technique 2: the ratio ``gamma = sigma_{i-1}/sigma_i > 1`` with :func:`ncsn_overlap` ``= overlap``.

    The paper asks for an overlap of about 0.5. Its published configurations (CIFAR-10 L = 232,
    CelebA L = 500, FFHQ L = 2311, all sigma_L = 0.01) have an overlap of 0.567 each, i.e. about 5%
    more levels than 0.5 gives.
    """
    from scipy.optimize import brentq

    dim = check_count("dim", dim)
    target = float(overlap)
    if not 0.0 < target < _phi(3.0) - _phi(-3.0):
        raise ValueError(f"overlap must be in (0, {_phi(3.0) - _phi(-3.0):.4f}) (its value at gamma = 1), got {overlap}")

    def gap(g: float) -> float:
        return ncsn_overlap(g, dim) - target

    hi = 2.0
    while gap(hi) > 0:
        hi *= 2.0
        if hi > 1e6:  # for D <= 4 the second Phi argument never becomes positive: no root
            raise ValueError(
                f"NCSNv2 Technique 2 has no solution for data dimension {dim}: the shell overlap stays above "
                f"{target} for every ratio (the rule is a high-dimensional approximation, D >= 5); choose the levels directly"
            )
    return float(brentq(gap, 1.0, hi, xtol=1e-15, rtol=4 * 2.0**-52))


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def ncsn_variance_ratio(eps: float, n_steps_each: int, gamma: float, *, sigma_min: float) -> float:
    """NCSNv2 §3, the quantity of Technique 4: ``s_T^2 / sigma_i^2`` after ``T`` Langevin
    steps of size ``alpha_i = eps sigma_i^2 / sigma_L^2`` started from level ``sigma_{i-1} = gamma sigma_i``:
    ``(1 - eps/s_L^2)^(2T) (gamma^2 - 2 eps / (s_L^2 - s_L^2 (1 - eps/s_L^2)^2)) + 2 eps / (s_L^2 - s_L^2 (1 - eps/s_L^2)^2)``."""
    s2 = sigma_min**2
    q = 2.0 * eps / (s2 - s2 * (1.0 - eps / s2) ** 2)
    return (1.0 - eps / s2) ** (2 * n_steps_each) * (gamma**2 - q) + q


def ncsn_step_lr(n_steps_each: int, gamma: float, *, sigma_min: float) -> float:
    """NCSNv2 Technique 4: the ``eps`` in ``(0, sigma_L^2)`` making :func:`ncsn_variance_ratio` closest to 1.

    The ratio exceeds 1 for every admissible ``eps`` (it is ``gamma^2`` at 0 and ``2/(1+a)`` with
    ``a = 1 - eps/sigma_L^2`` once the ``a^(2T)`` term dies), so this is a bounded minimisation.
    """
    from scipy.optimize import minimize_scalar

    t = check_count("n_steps_each", n_steps_each)
    s2 = check_positive("sigma_min", sigma_min) ** 2
    if not gamma > 1:
        raise ValueError(f"gamma must be > 1 (the ratio sigma_(i-1)/sigma_i), got {gamma}")
    # Minimise over u = log(eps / s2) in (log 1e-12, 0): eps spans many decades for large T.
    res = minimize_scalar(
        lambda u: ncsn_variance_ratio(s2 * math.exp(u), t, gamma, sigma_min=sigma_min),
        bounds=(math.log(1e-12), math.log(1.0 - 1e-12)),
        method="bounded",
        options=dict(xatol=1e-10),
    )
    return float(s2 * math.exp(res.x))


def ncsn_schedule(
    data: Tensor, n_steps_each: int, *, sigma_min: float = 0.01, overlap: float = 0.5, chunk_size: int = 2048
) -> tuple[float, int, float]:
    """NCSNv2 (Song & Ermon 2020) Techniques 1, 2, 4 -> ``(sigma_max, n_levels, step_lr)``.

    ``sigma_max`` is the largest pairwise distance of ``data`` (Technique 1); ``n_levels`` the
    fewest levels of a geometric grid from ``sigma_max`` to ``sigma_min`` whose ratio is at most the
    Technique-2 ``gamma`` (shell ``overlap``, 0.5 in the paper); ``step_lr`` the Technique-4 ``eps`` for ``n_steps_each`` steps per level,
    computed with the grid's actual ratio ``(sigma_max/sigma_min)^(1/(n_levels-1))``.
    """
    sigma_max = max_pairwise_distance(data, chunk_size)
    sigma_min = check_positive("sigma_min", sigma_min)
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min ({sigma_min:.6g}) must be below the largest pairwise distance ({sigma_max:.6g})")
    gamma = ncsn_gamma(data[0].numel(), overlap)
    n_levels = levels_for_ratio(gamma, sigma_min=sigma_min, sigma_max=sigma_max)
    ratio = (sigma_max / sigma_min) ** (1.0 / (n_levels - 1))
    return sigma_max, n_levels, ncsn_step_lr(n_steps_each, ratio, sigma_min=sigma_min)


def levels_for_ratio(gamma: float, *, sigma_min: float, sigma_max: float) -> int:
    """The fewest levels ``L >= 2`` of a geometric grid from ``sigma_max`` to ``sigma_min`` with ratio ``<= gamma``."""
    n = math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-12) + 1
    return max(n, 2)


def grid_ratio(sigmas: list[float]) -> Optional[float]:
    """The mean geometric ratio ``(sigma_1/sigma_L)^(1/(L-1))`` of a positive grid (``None`` for one level)."""
    if len(sigmas) < 2:
        return None
    return (sigmas[0] / sigmas[-1]) ** (1.0 / (len(sigmas) - 1))


def sigma_grid(kind: str, n: int, *, sigma_min: float, sigma_max: float) -> Tensor:
    """A grid by name: ``"karras"`` (:func:`sigmas_karras`) or ``"geometric"`` (:func:`sigmas_loglinear`:
    NCSN's ``n`` geometric levels, then 0); every sampler of ``SAMPLERS`` takes either."""
    grids = {"karras": sigmas_karras, "geometric": sigmas_loglinear}
    if kind not in grids:
        raise ValueError(f"unknown grid kind {kind!r}; expected 'karras' or 'geometric'")
    return grids[kind](n, sigma_min=sigma_min, sigma_max=sigma_max)
