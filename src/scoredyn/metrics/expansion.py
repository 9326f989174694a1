"""The expansion factor ``gamma_ex`` of Zhou, Zhang & Wright 2026 (arXiv 2601.19285, §3.2, Fig. 4).

For two training points ``mu_0, mu_1`` (by default the closest pair of the training set) and a
noise level ``sigma*``, a point ``x`` with ``|x - mu_1| = sigma* sqrt(d)`` and
``|x - mu_0| = C |x - mu_1|`` (``C = ratio >= 1``: ``mu_1`` dominates) and its mirror image ``y``
across the bisecting hyperplane of the pair (so ``|y - mu_1| = C |y - mu_0|``; ``y - x`` is along
``mu_0 - mu_1``) are each moved by one sampler step at ``sigma*``,

    x' = x + h (D(x, sigma*) - x) = x + h sigma*^2 s(x, sigma*),

and ``gamma_ex = |y' - x'| / |y - x|``. ``h = 1`` (the default) is the full denoising step. For the
empirical score of the two points (§3.2) the weight ratio is ``a = exp((C^2 - 1) d / 2)`` and

    gamma_ex = |(1 - h) + h (1 - 2 / (a + 1)) |mu_0 - mu_1| / |y - x||,  |y - x| = (C^2 - 1) d sigma*^2 / |mu_0 - mu_1|,

which grows like ``1 / sigma*^2``: nearby inputs are pushed apart to different training points.
The paper reports ~1e3 for the empirical score at small ``sigma*`` and about 1-2 for trained
networks (Fig. 4). Any denoiser ``D(x, sigma)`` can be measured (analytic scores, networks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import Denoiser, check_data, check_positive
from .._result import Result


@dataclass(frozen=True)
class ExpansionFactor(Result):
    """``gamma`` ``(S,)`` at the levels ``sigma_star`` ``(S,)`` for the pair ``(i0, i1)`` at ``ratio``."""

    sigma_star: tuple[float, ...]
    gamma: tuple[float, ...]
    pair: tuple[int, int]
    ratio: float
    step: float
    pair_distance: float


def closest_pair(data: Tensor) -> tuple[int, int]:
    """Indices of the two closest distinct (non-identical) training points."""
    from .knn import knn

    n = data.shape[0]
    if n < 2:
        raise ValueError(f"data needs at least 2 points for a pair, got {n}")
    dist, idx = knn(data, data, min(n, 8))
    dist = torch.where(dist > 0, dist, torch.full_like(dist, math.inf))
    flat = int(dist.reshape(-1).argmin())
    i, j = divmod(flat, dist.shape[1])
    if not math.isfinite(float(dist[i, j])):
        raise ValueError("all candidate pairs are identical points; pass pair=(i, j) of two distinct points")
    return (int(idx[i, j]), i)


def pair_points(mu0: Tensor, mu1: Tensor, sigma_star: float, ratio: float, u: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` (``|x - mu_1| = sigma* sqrt(d)``, ``|x - mu_0| = ratio |x - mu_1|``) and its mirror ``y``.

    ``u``: a unit vector orthogonal to ``mu_0 - mu_1`` (flattened); raises when no such ``x`` exists.
    """
    d = mu0.numel()
    delta = float(torch.linalg.vector_norm(mu0 - mu1))
    e = (mu0 - mu1).reshape(-1) / delta
    r1 = sigma_star * math.sqrt(d)
    alpha = (delta**2 + r1**2 - (ratio * r1) ** 2) / (2 * delta)
    beta2 = r1**2 - alpha**2
    if beta2 < 0:
        lo, hi = delta / ((ratio + 1) * math.sqrt(d)), (delta / ((ratio - 1) * math.sqrt(d)) if ratio > 1 else math.inf)
        raise ValueError(f"no point at sigma*={sigma_star:.4g} with distance ratio {ratio} to a pair {delta:.4g} apart in "
                         f"d={d}; expected sigma* in ({lo:.4g}, {hi:.4g})")
    x = mu1.reshape(-1) + alpha * e + math.sqrt(beta2) * u
    y = x + (delta - 2 * alpha) * e
    return x.reshape(mu0.shape), y.reshape(mu0.shape)


def expansion_factor(
    model: Denoiser,
    data: Tensor,
    sigma_star: Union[Sequence[float], Tensor],
    *,
    ratio: float = 1.05,
    step: float = 1.0,
    pair: Optional[tuple[int, int]] = None,
    seed: int = 0,
) -> ExpansionFactor:
    """``gamma_ex(sigma*)`` of Zhou et al. §3.2 (module docstring) for the denoiser ``model``.

    ``data``: the training set; ``pair``: indices ``(i0, i1)`` (``mu_1 = data[i1]`` dominates at
    ``x``; default: the closest pair); ``ratio``: ``C >= 1`` (the paper does not state its value);
    ``step``: ``h`` of the step ``x + h (D - x)``; ``seed``: the direction orthogonal to the pair.
    """
    check_data("data", data, min_points=2)
    ratio = check_positive("ratio", ratio)
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (the dominant point is mu_1), got {ratio}")
    step = check_positive("step", step)
    levels = [check_positive("sigma_star", float(s)) for s in torch.as_tensor(sigma_star, dtype=torch.float64).reshape(-1)]
    if not levels:
        raise ValueError("sigma_star must hold at least one noise level")
    i0, i1 = closest_pair(data) if pair is None else (int(pair[0]), int(pair[1]))
    if not (0 <= i0 < data.shape[0] and 0 <= i1 < data.shape[0]) or i0 == i1:
        raise ValueError(f"pair must be two distinct indices into the {data.shape[0]} training points, got {pair}")
    mu0, mu1 = data[i0], data[i1]
    delta = float(torch.linalg.vector_norm((mu0 - mu1).double()))
    if delta == 0:
        raise ValueError(f"the pair {(i0, i1)} holds two identical points; expected distinct points")
    d = mu0.numel()
    if d < 2:
        raise ValueError("expansion_factor needs dimension >= 2 (a direction orthogonal to the pair)")
    e = (mu0 - mu1).reshape(-1).double() / delta
    g = torch.randn(d, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    u = g - (g @ e) * e
    u = (u / torch.linalg.vector_norm(u)).to(device=data.device, dtype=data.dtype)
    xs, ys = zip(*(pair_points(mu0, mu1, s, ratio, u) for s in levels))
    pts = torch.cat([torch.stack(xs), torch.stack(ys)])
    sig = torch.tensor(levels * 2, dtype=data.dtype, device=data.device)
    with torch.no_grad():
        den = model(pts, sig)
    moved = pts + step * (den - pts)
    n = len(levels)
    gamma = (torch.linalg.vector_norm((moved[n:] - moved[:n]).flatten(1).double(), dim=1)
             / torch.linalg.vector_norm((pts[n:] - pts[:n]).flatten(1).double(), dim=1))
    if not bool(torch.isfinite(gamma).all()):
        raise ValueError(f"the model returned non-finite values at sigma* = {levels}")
    return ExpansionFactor(tuple(levels), tuple(float(v) for v in gamma), (i0, i1), ratio, step, delta)
