"""How many generated samples copy a training point (DESIGN.md §5).

Two criteria on exact nearest-neighbour distances (:func:`scoredyn.metrics.knn.knn`):

* Gu et al. 2023, "On Memorization in Diffusion Models" (after Yoon et al. 2023): a sample ``x`` is a copy when
  ``|x - NN1(x)| / |x - NN2(x)| < 1/3``, with ``NN1``/``NN2`` its nearest and second-nearest training
  points (Euclidean distance in data space).
* Kim 2026, Theorem 4.4: when the training loss is minimal, stable equilibria of the sampling
  dynamics lie in balls ``|x - x_i| < k sigma_min`` around training points; the fraction of samples
  inside such a ball measures that regime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_data, check_positive, check_query
from .._dist import all_gather_topk, shard_offset
from .._result import Result
from .knn import knn_checked

COPY_RATIO = 1.0 / 3.0
"""Gu et al. 2023: a sample is a copy when ``d(NN1) / d(NN2) < COPY_RATIO``."""


@dataclass(frozen=True)
class Memorization(Result):
    """What :func:`memorization` measures.

    * ``copy_fraction``: fraction of samples with ``ratio < 1/3`` (Gu et al. 2023);
    * ``within_k_sigma``: ``{k: fraction with nn_distance <= k * sigma_min}`` (Kim 2026, Thm 4.4),
      empty when ``sigma_min`` is not given;
    * ``nn_distance_quantiles``: ``{q: quantile of nn_distance}``;
    * ``nn_index`` ``(B,)`` long: index of the nearest training point;
    * ``nn_distance`` ``(B,)`` float64: distance to it; ``ratio`` ``(B,)`` float64: ``d(NN1)/d(NN2)``,
      defined as 0 for an exact copy of a duplicated training point (``d(NN1) = d(NN2) = 0``);
    * ``is_copy`` ``(B,)`` bool.
    """

    copy_fraction: float
    within_k_sigma: Mapping[float, float]
    nn_distance_quantiles: Mapping[float, float]
    nn_index: Tensor
    nn_distance: Tensor
    ratio: Tensor
    is_copy: Tensor


def memorization(
    samples: Tensor,
    reference: Tensor,
    *,
    sigma_min: Optional[float] = None,
    k: Union[float, Sequence[float]] = 1.0,
    chunk_size: Optional[int] = None,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    group: object = None,
) -> Memorization:
    """Memorization statistics (:class:`Memorization`) of ``samples (B, *shape)`` against the training
    set ``reference (N, *shape)``, ``N >= 2``; ``k`` one ball radius factor or several.

    Neighbours are exact (chunked over the training set, ``chunk_size`` rows per block) with the
    winners' distances recomputed in float64, so the ratio is right for near copies.

    ``group``: a ``torch.distributed`` process group (DESIGN.md §7). Every rank passes the same
    ``samples`` and its own shard of the training set (ranks in order of their shards); each finds its
    local two nearest neighbours, one all-gather merges them, and ``nn_index`` indexes the
    concatenation of the shards. Every rank gets the full result.
    """
    train = check_data("reference", reference, min_points=1)
    offset, n_total = (0, train.shape[0]) if group is None else shard_offset(train.shape[0], train.device, group)
    if n_total < 2:
        raise ValueError(
            f"reference has {n_total} point; the copy ratio d(NN1)/d(NN2) needs at least 2 training points"
        )
    check_data("samples", samples, min_points=1)
    check_query(samples, tuple(train.shape[1:]), name="samples")
    ks = [check_positive("k", v) for v in ((k,) if isinstance(k, (int, float)) else k)]
    if sigma_min is not None:
        check_positive("sigma_min", sigma_min)
    qs = [float(q) for q in quantiles]
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")

    if train.shape[0] >= 2:
        dist, idx = knn_checked(samples, train, 2, chunk_size=chunk_size)
    else:  # a one-point shard: its second neighbour is "none"
        dist, idx = knn_checked(samples, train, 1, chunk_size=chunk_size)
        dist = torch.cat([dist, torch.full_like(dist, float("inf"))], 1)
        idx = torch.cat([idx, torch.full_like(idx, -1)], 1)
    if group is not None:
        dist, idx = all_gather_topk(dist, idx + offset, 2, group, largest=False)
    d1, d2 = dist[:, 0], dist[:, 1]
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny), torch.zeros_like(d1))
    is_copy = ratio < COPY_RATIO
    q_values = torch.quantile(d1, torch.tensor(qs, dtype=d1.dtype, device=d1.device)) if qs else d1[:0]
    within = {} if sigma_min is None else {v: float((d1 <= v * float(sigma_min)).double().mean()) for v in ks}
    return Memorization(
        copy_fraction=float(is_copy.double().mean()),
        within_k_sigma=within,
        nn_distance_quantiles=dict(zip(qs, q_values.tolist())),
        nn_index=idx[:, 0],
        nn_distance=d1,
        ratio=ratio,
        is_copy=is_copy,
    )
