"""Distances between two sample sets (DESIGN.md §5): sliced Wasserstein, MMD, energy distance,
k-NN precision/recall.

Inputs are ``(n, *shape)`` tensors, flattened per point; every statistic is computed in float64 on
the inputs' device, in row blocks (memory ``O(block x m)``), and returned as a Python float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_count, check_data, check_positive
from .._result import Result
from .knn import BLOCK_ELEMENTS, distance_blocks, knn_checked, sq_distances

Bandwidth = Union[None, float, Sequence[float]]

MEDIAN_HEURISTIC_POINTS = 1000
"""The median heuristic uses at most this many evenly spaced points of the pooled sample."""

MMD_BANDWIDTH_NOTE = (
    "MMD uses the RBF kernel exp(-|x-y|^2 / (2 h^2)); unless a bandwidth is given, h is the median "
    "pairwise Euclidean distance of the pooled samples (median heuristic, Gretton et al. 2012) over "
    f"at most {MEDIAN_HEURISTIC_POINTS} evenly spaced points, so values computed with different "
    "bandwidths are not comparable."
)


def as_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, min_points: int = 2) -> tuple[Tensor, Tensor]:
    """Validate two sample sets and flatten them to float64 ``(n, d)`` and ``(m, d)``."""
    check_data(name_a, a, min_points=min_points)
    check_data(name_b, b, min_points=min_points)
    if a[0].numel() != b[0].numel() or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{name_a} has points of shape {tuple(a.shape[1:])} but {name_b} of shape {tuple(b.shape[1:])}; "
            f"expected the same shape"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} on {b.device}; put both on one device")
    return a.reshape(a.shape[0], -1).to(torch.float64), b.reshape(b.shape[0], -1).to(torch.float64)


def block_sum(x: Tensor, y: Tensor, kernel: Callable[[Tensor, Tensor], Tensor], same: bool = False) -> Tensor:
    """``sum_{i,j} kernel(x_i, y_j)`` (0-d), excluding ``i == j`` when ``same`` (then ``x is y``).

    ``kernel(xb, y)`` maps a row block ``(b, d)`` and ``(m, d)`` to a ``(b, m)`` matrix.
    """
    block = max(1, BLOCK_ELEMENTS // max(y.shape[0], 1))
    total = x.new_zeros(())
    for start in range(0, x.shape[0], block):
        kb = kernel(x[start : start + block], y)
        if same:
            kb.diagonal(offset=start).zero_()
        total = total + kb.sum()
    return total


def mmd2_unbiased(a: Tensor, b: Tensor, kernel: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Unbiased ``MMD^2`` (Gretton et al. 2012, Lemma 6) of flattened samples for a kernel function.

    ``sum_{i!=j} k(a_i,a_j) / (n(n-1)) + sum_{i!=j} k(b_i,b_j) / (m(m-1)) - 2 sum_{i,j} k(a_i,b_j) / (nm)``.
    """
    n, m = a.shape[0], b.shape[0]
    kaa = block_sum(a, a, kernel, same=True) / (n * (n - 1))
    kbb = block_sum(b, b, kernel, same=True) / (m * (m - 1))
    kab = block_sum(a, b, kernel) / (n * m)
    return kaa + kbb - 2.0 * kab


def _rbf(bandwidths: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean of RBF kernels ``exp(-|x-y|^2 / (2 h^2))`` over the bandwidths ``h``."""
    inv = 1.0 / (2.0 * bandwidths**2)

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        d2 = sq_distances(x, y)
        out = torch.zeros_like(d2)
        for c in inv:
            out += torch.exp(-c * d2)
        return out / inv.shape[0]

    return kernel


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """KID's cubic kernel ``(x.y / d + 1)^3`` (Bińkowski et al. 2018, §4)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def median_bandwidth(a: Tensor, b: Tensor) -> float:
    """Median pairwise distance of the pooled flattened samples (median heuristic, see ``MMD_BANDWIDTH_NOTE``)."""
    pooled = torch.cat([a, b])
    n = pooled.shape[0]
    if n > MEDIAN_HEURISTIC_POINTS:
        pooled = pooled[torch.linspace(0, n - 1, MEDIAN_HEURISTIC_POINTS, device=pooled.device).round().long()]
    d2 = sq_distances(pooled - pooled.mean(0), pooled - pooled.mean(0))
    i, j = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1, device=pooled.device)
    h = float(torch.quantile(d2[i, j].sqrt(), 0.5))
    if not h > 0:
        raise ValueError("median heuristic bandwidth is 0 (most points coincide); pass bandwidth explicitly")
    return h


def mmd(samples: Tensor, reference: Tensor, kernel: str = "rbf", bandwidth: Bandwidth = None) -> float:
    """Unbiased squared maximum mean discrepancy ``MMD^2(samples, reference)`` (Gretton et al. 2012).

    ``kernel="rbf"``: ``exp(-|x-y|^2 / (2 h^2))``; ``bandwidth`` a float ``h``, a list of them (the
    kernel is then their mean), or ``None`` for the median heuristic (see :data:`MMD_BANDWIDTH_NOTE`).
    ``kernel="polynomial"``: KID's ``(x.y/d + 1)^3`` (no bandwidth). The estimate is unbiased, so it
    can be slightly negative when the distributions agree.
    """
    A, B = as_pair("samples", samples, "reference", reference)
    if kernel == "polynomial":
        if bandwidth is not None:
            raise ValueError("bandwidth applies to kernel='rbf' only; the polynomial kernel has none")
        return float(mmd2_unbiased(A, B, polynomial_kernel))
    if kernel != "rbf":
        raise ValueError(f"kernel must be 'rbf' or 'polynomial', got {kernel!r}")
    center = torch.cat([A, B]).mean(0)
    A, B = A - center, B - center
    if bandwidth is None:
        hs = [median_bandwidth(A, B)]
    else:
        hs = [bandwidth] if isinstance(bandwidth, (int, float)) else list(bandwidth)
        if not hs:
            raise ValueError("bandwidth list is empty; expected at least one bandwidth")
        hs = [check_positive("bandwidth", h) for h in hs]
    return float(mmd2_unbiased(A, B, _rbf(torch.tensor(hs, dtype=torch.float64))))


def _euclid(x: Tensor, y: Tensor) -> Tensor:
    return sq_distances(x, y).sqrt_()


def energy_distance(samples: Tensor, reference: Tensor) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Székely & Rizzo 2013, eq. 1), as U-statistics.

    This is the squared form (``>= 0`` for the population, ``0`` iff the distributions agree); the
    within-set means exclude ``i == j``, so the estimate is unbiased and may be slightly negative.
    """
    A, B = as_pair("samples", samples, "reference", reference)
    center = torch.cat([A, B]).mean(0)
    A, B = A - center, B - center
    n, m = A.shape[0], B.shape[0]
    eab = block_sum(A, B, _euclid) / (n * m)
    eaa = block_sum(A, A, _euclid, same=True) / (n * (n - 1))
    ebb = block_sum(B, B, _euclid, same=True) / (m * (m - 1))
    return float(2.0 * eab - eaa - ebb)


def _w2_sq_sorted(sa: Tensor, sb: Tensor) -> Tensor:
    """Squared 1-D ``W_2`` per row between sorted samples ``(P, n)`` and ``(P, m)``.

    ``int_0^1 (F_a^{-1}(t) - F_b^{-1}(t))^2 dt`` exactly: both quantile functions are piecewise
    constant, so the integral is a sum over the merged breakpoints ``{i/n} U {j/m}``.
    """
    n, m = sa.shape[1], sb.shape[1]
    if n == m:
        return ((sa - sb) ** 2).mean(1)
    dev = sa.device
    t = torch.cat([torch.arange(1, n + 1, device=dev, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, device=dev, dtype=torch.float64) / m])
    t = torch.sort(t).values
    w = torch.diff(t, prepend=t.new_zeros(1))
    mid = t - w / 2
    ia = (mid * n).floor().long().clamp_(0, n - 1)
    ib = (mid * m).floor().long().clamp_(0, m - 1)
    return ((sa[:, ia] - sb[:, ib]) ** 2 @ w)


def sliced_wasserstein(samples: Tensor, reference: Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance ``SW_2 = (mean_theta W_2^2(theta.a, theta.b))^{1/2}``.

    ``n_projections`` directions uniform on the sphere, drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` (the same for every device). Each 1-D ``W_2`` is exact for
    the two empirical distributions, including unequal sample sizes (merged quantile functions).
    """
    A, B = as_pair("samples", samples, "reference", reference, min_points=1)
    n_projections = check_count("n_projections", n_projections)
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(n_projections, A.shape[1], generator=gen, dtype=torch.float64)
    theta = (theta / torch.linalg.vector_norm(theta, dim=1, keepdim=True)).to(A.device)
    sa = torch.sort(theta @ A.T, dim=1).values
    sb = torch.sort(theta @ B.T, dim=1).values
    return float(_w2_sq_sorted(sa, sb).mean().sqrt())


@dataclass(frozen=True)
class PrecisionRecall(Result):
    """Improved precision and recall (Kynkäänniemi et al. 2019): the fraction of samples inside the
    reference manifold, and of reference points inside the samples' manifold."""

    precision: float
    recall: float


def _coverage(queries: Tensor, ref: Tensor, radii: Tensor) -> Tensor:
    """Fraction of ``queries`` inside at least one ball ``|q - ref_i| <= radii_i``."""
    inside = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    r2 = radii**2
    chunk = max(1, BLOCK_ELEMENTS // queries.shape[0])
    for start, d2 in distance_blocks(queries, ref, chunk):
        inside |= (d2 <= r2[start : start + d2.shape[1]]).any(1)
    return inside.double().mean()


def precision_recall(samples: Tensor, reference: Tensor, k: int = 3) -> PrecisionRecall:
    """k-NN precision and recall of generated ``samples`` against ``reference`` (real) points.

    Kynkäänniemi et al. 2019, eq. 1-3: each set's manifold is the union of balls around its points
    with radius the distance to the point's ``k``-th nearest neighbour in the same set; precision is
    the fraction of samples inside the reference's manifold, recall the fraction of reference points
    inside the samples'.
    """
    k = check_count("k", k)
    S, R = as_pair("samples", samples, "reference", reference, min_points=k + 1)
    radii_r = knn_checked(R, R, k + 1)[0][:, k]
    radii_s = knn_checked(S, S, k + 1)[0][:, k]
    return PrecisionRecall(precision=float(_coverage(S, R, radii_r)), recall=float(_coverage(R, S, radii_s)))
