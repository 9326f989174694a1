"""Temperature smoothing of Zhou, Zhang & Wright 2026 (arXiv 2601.19285, §4 "Temperature Smoothing",
eq. 5, 10, 11): the tempered training target and the exact optimum of a network trained toward it.

**The target (eq. 10).** For a training point ``mu = mu_j0`` with its ``K`` nearest training points
``mu_(1..K)`` (itself included; found once, exactly, in pixel space or in a user feature space), at
a training level ``sigma_i < sigma_c`` and ``x = mu + sigma_i z``, with ``r_j = |x - mu_(j)|`` and
``d`` the dimension, the sigma-domination approximation (eq. 5: one level ``sigma*_j^2 = r_j^2 / d``
per centre, so ``log(sigma*^2 N(x; mu_j, sigma*^2 I)) = -(d/2) ln(r_j^2 / d) + const``) gives the
power-law logits ``l_j = -(d / (2 T_j)) ln(r_j^2 / d)`` and weights ``w = softmax_j(l)``:

* ``variant="paper"`` (eq. 10): ``T_j = max(sigma_c / sigma*_j, 1)`` and
  ``t = sum_j w_j (mu_(j) - x) / sigma*_j^2``;
* ``variant="code"`` (the released ``losses.py::compute_explicit_score``, with the schedule
  ``T = max(sigma_c / sigma_i, 1)`` of its commented-out line ``temperature_factor / sigma``; the
  snapshot read, 7f3fe56, hard-codes ``T = sqrt(d)``): one temperature for all ``j`` and
  ``t = sum_j w_j (mu_(j) - x) / sigma_i^2``.

At ``sigma_i >= sigma_c`` (and whenever ``sigma_c = 0``) the target is the ordinary denoising score
``(mu - x) / sigma_i^2`` (eq. 9). The loss is ``1/2 sigma_i^2 |s(x) - t|^2`` (eq. 11 with the
``lambda = sigma^2`` weight of the released code) with ``sigma_i`` uniform over discrete levels.

**The optimum.** A noise-unconditional network ``s(x)`` minimises that loss pointwise at

    s*(x) = sum_{i,j0} sigma_i^2 N(x; mu_j0, sigma_i^2 I) t_{i,j0}(x) / sum_{i,j0} sigma_i^2 N(x; mu_j0, sigma_i^2 I)

(the same argument as DESIGN.md §3 "Noise-agnostic optimum", with the target in place of
``(mu_j0 - x) / sigma_i^2``). The released code's network is sigma-blind too but divides its output by
sigma (score_sde's NCSN++ with ``conditional=False, scale_by_sigma=True``, the configs of
``configs/ve/*_ncsnpp.py``): score ``f(x) / sigma``, our ``"multiplicative"`` conditioning, whose
optimum ``f*(x) = sum sigma_i N_{i,j0} t_{i,j0} / sum N_{i,j0}`` replaces ``sigma_i^2`` by ``sigma_i``
in the numerator and by 1 in the denominator (``conditioning="multiplicative"``; at ``sigma_c = 0``
it is ``NoiseAgnostic(conditioning="multiplicative")``). :class:`TemperedOptimum` evaluates it exactly: per query chunk, the
squared distances to all training points (one matrix product on centred data), then the
``(level, j0)`` log-weights ``(2 - d) ln sigma_i - r_j0^2 / (2 sigma_i^2)`` with one shift per query,
and every target expanded as a combination of training points, so the numerator is one more matrix
product ``C @ data - C.sum() x`` with coefficients ``C`` scattered from the neighbour table.
At ``sigma_c = 0`` it is exactly ``NoiseAgnostic(conditioning=...)`` on the same levels.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import SigmaLike, bcast, check_data, check_positive, check_query
from .base import AnalyticDenoiser
from .empirical import check_chunk, check_output

CONDITIONINGS = {"unconditional": 0, "multiplicative": 1}
"""The power ``q`` of the score ``f(x) / sigma^q`` of a sigma-blind network (``scoredyn.nets.precondition``)."""

VARIANTS = ("paper", "code")
"""``paper``: eq. 10 (per-neighbour ``sigma*_j`` in T and the denominator); ``code``: the released code."""

FeatureMap = Callable[[Tensor], Tensor]
"""Maps points ``(n, *data_shape)`` to features ``(n, f)`` in which the neighbours are searched."""


def check_variant(variant: str) -> str:
    """Validate a tempering variant name."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def neighbour_table(data: Tensor, k: int, features: Optional[FeatureMap] = None) -> Tensor:
    """``(N, k)`` row indices of the ``k`` nearest training points of every training point, itself first.

    Exact search (:func:`scoredyn.metrics.knn`) once, in pixel space or in ``features(data)``. A point
    is always its own first neighbour, even when duplicates tie with it.
    """
    from ..metrics.knn import knn

    check_data("data", data)
    n = data.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of training points), got {k!r}")
    space = data
    if features is not None:
        with torch.no_grad():
            space = features(data)
        if not isinstance(space, Tensor) or space.dim() < 2 or space.shape[0] != n:
            raise ValueError(f"features must map the (N, ...) data to a tensor (N, f); got {getattr(space, 'shape', type(space))}")
        check_data("features(data)", space.reshape(n, -1))
    _, idx = knn(space, space, k)
    ar = torch.arange(n, device=idx.device)
    is_self = idx == ar[:, None]
    has = is_self.any(1)
    table = torch.empty_like(idx)
    table[:, 0] = ar
    table[has, 1:] = idx[has][~is_self[has]].reshape(-1, k - 1)
    table[~has, 1:] = idx[~has, : k - 1]
    return table.to(data.device)


def tempered_weights(r2: Tensor, sigma: Tensor, sigma_c: float, variant: str, d: int) -> tuple[Tensor, Tensor]:
    """Weights ``w (..., K)`` of eq. 10 and the per-neighbour denominators ``(..., K)`` of the target.

    ``r2``: squared distances ``|x - mu_(j)|^2`` ``(..., K)``; ``sigma``: the training level,
    broadcastable to ``r2[..., :1]``. ``sigma*_j^2 = r_j^2 / d``; logits ``-(d / (2 T_j)) ln sigma*_j^2``.
    """
    s2 = (r2 / d).clamp_min(torch.finfo(r2.dtype).tiny)
    if variant == "paper":
        temp = (sigma_c / s2.sqrt()).clamp_min(1.0)
        denom = s2
    else:
        temp = (sigma_c / sigma).clamp_min(1.0)
        denom = sigma * sigma
    w = torch.softmax(-(0.5 * d) * s2.log() / temp, dim=-1)
    w, denom = torch.broadcast_tensors(w, denom)
    return w, denom


def tempered_target(x: Tensor, sigma: Tensor, mu: Tensor, neighbours: Tensor, *, sigma_c: float,
                    variant: str = "paper") -> Tensor:
    """The score target of eq. 10 at ``x = mu + sigma z``: tempered below ``sigma_c``, ``(mu - x)/sigma^2`` above.

    ``x``, ``mu``: ``(B, *shape)``; ``sigma``: ``(B,)``; ``neighbours``: ``(B, K, *shape)``, the ``K``
    nearest training points of each clean ``mu`` (:func:`neighbour_table`).
    """
    check_variant(variant)
    b = x.shape[0]
    xf, nb = x.reshape(b, 1, -1), neighbours.reshape(b, neighbours.shape[1], -1)
    d = xf.shape[-1]
    s = sigma.reshape(b, 1).to(x.dtype)
    plain = (mu - x) / bcast(sigma.to(x.dtype), x) ** 2
    if sigma_c <= 0:
        return plain
    diff = nb - xf  # (B, K, d)
    w, denom = tempered_weights(diff.square().sum(-1), s, sigma_c, variant, d)
    tempered = ((w / denom).unsqueeze(-1) * diff).sum(1).reshape(x.shape)
    low = bcast(sigma < sigma_c, x)
    return torch.where(low, tempered, plain)


class TemperedOptimum(AnalyticDenoiser):
    """Exact pointwise optimum ``f*(x)`` of a sigma-blind network trained with the tempered objective
    (Zhou et al. 2026, eq. 10/11; module docstring), as a denoiser: ``D = x + sigma^2 f*`` (score ``f*``,
    ``conditioning="unconditional"``, eq. 9) or ``D = x + sigma f*`` (score ``f* / sigma``,
    ``"multiplicative"``: the released code's ``scale_by_sigma`` network).

    Args:
        data: training set ``(N, *data_shape)``; the model follows its dtype and device.
        sigma_min, sigma_max: the geometric training range (keyword-only); with ``levels`` given as
            a tensor they may be ``None``.
        levels: the number of geometric levels between ``sigma_max`` and ``sigma_min`` or the levels
            themselves (uniform over them, as ``NoiseAgnostic``); ``None``: 64 levels.
        sigma_c: collapse level; targets are tempered at ``sigma_i < sigma_c`` (0: no tempering).
        k: neighbours per training point (itself included).
        variant: ``"paper"`` or ``"code"`` (module docstring).
        features: neighbour space (``None``: pixel space).
        conditioning: ``"unconditional"`` (score ``f(x)``) or ``"multiplicative"`` (score ``f(x) / sigma``).
        chunk_size: training points ``j0`` per chunk (``None``: automatic); queries are processed
            in chunks of ``query_chunk``.
    """

    jacobian_mode = "jvp"

    def __init__(
        self,
        data: Tensor,
        *,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        levels: Union[int, Tensor, Sequence[float], None] = None,
        sigma_c: float,
        k: int,
        variant: str = "paper",
        features: Optional[FeatureMap] = None,
        conditioning: str = "unconditional",
        chunk_size: Optional[int] = None,
        query_chunk: int = 256,
    ) -> None:
        super().__init__()
        check_data("data", data)
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {sorted(CONDITIONINGS)}, got {conditioning!r}")
        self.conditioning, self.q = conditioning, CONDITIONINGS[conditioning]
        self.variant = check_variant(variant)
        self.sigma_c = check_positive("sigma_c", sigma_c, allow_zero=True)
        self.k = int(k)
        self.chunk_size = check_chunk(chunk_size)
        self.query_chunk = check_chunk(query_chunk) or 256
        lv = self._levels(levels, sigma_min, sigma_max, data.dtype)
        self.sigma_min, self.sigma_max = float(lv.min()), float(lv.max())
        self.data_shape = tuple(data.shape[1:])
        self.n_points = data.shape[0]
        self.dim = d = int(math.prod(self.data_shape))
        flat = data.detach().reshape(self.n_points, d)
        self.register_buffer("points", flat, persistent=False)
        self.register_buffer("center", flat.mean(0, keepdim=True), persistent=False)
        self.register_buffer("levels", lv.to(device=data.device), persistent=False)
        self.register_buffer("table", neighbour_table(data.detach(), self.k, features), persistent=False)

    @staticmethod
    def _levels(levels: object, sigma_min: Optional[float], sigma_max: Optional[float], dtype: torch.dtype) -> Tensor:
        if levels is None or isinstance(levels, int):
            n = 64 if levels is None else levels
            if isinstance(n, bool) or n < 1:
                raise ValueError(f"levels must be a positive number of levels or the levels themselves, got {levels!r}")
            if sigma_min is None or sigma_max is None:
                raise ValueError("sigma_min and sigma_max are required unless the levels themselves are given")
            lo, hi = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
            if not lo < hi:
                raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo}, sigma_max={hi}")
            from ..sample.grids import sigmas_geometric

            return sigmas_geometric(n, sigma_max=hi, sigma_min=lo).to(torch.float64).to(dtype)
        try:
            lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1).cpu()
        except (TypeError, ValueError):
            raise ValueError(f"levels must be an int or a 1-D sequence of positive floats, got {type(levels).__name__}") from None
        if lv.numel() == 0 or not bool(torch.isfinite(lv).all()) or bool((lv <= 0).any()):
            raise ValueError(f"levels must be finite and > 0, got {lv.tolist()}")
        for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if v is not None:
                check_positive(name, v)
        if (sigma_min is not None and sigma_min > float(lv.min()) * (1 + 1e-6)) or (
                sigma_max is not None and sigma_max < float(lv.max()) * (1 - 1e-6)):
            raise ValueError(f"sigma_min/sigma_max ({sigma_min}, {sigma_max}) do not bracket the levels "
                             f"[{float(lv.min()):.6g}, {float(lv.max()):.6g}]; pass None or bracketing values")
        return lv.to(dtype)

    def _query(self, x: Tensor) -> Tensor:
        check_query(x, self.data_shape)
        if x.device != self.points.device:
            raise ValueError(f"x is on {x.device} but TemperedOptimum holds its data on {self.points.device}; move one of them")
        return x.to(self.points.dtype)

    def _field(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        if b == 0:
            return x.clone()
        xf = x.reshape(b, self.dim)
        out = [self._field_rows(xf[s : s + self.query_chunk]) for s in range(0, b, self.query_chunk)]
        return check_output(type(self).__name__, torch.cat(out)).reshape(x.shape)

    def _field_rows(self, xf: Tensor) -> Tensor:
        """``s*`` for query rows ``xf (B, d)``: coefficients ``C (B, N)`` so that the numerator is
        ``C @ data - C.sum(1) x``; all weights relative to one shift per query."""
        from ..metrics.knn import sq_distances

        d, n = self.dim, self.n_points
        xc, pc = xf - self.center, self.points - self.center
        r2 = sq_distances(xc, pc)  # (B, N)
        lv = self.levels
        low = lv < self.sigma_c
        # log(lambda c^2 N(x; mu_j0, sigma_i^2 I)) up to a constant, lambda = sigma^2, c = sigma^-q:
        # (2 - 2q - d) ln sigma_i - r^2 / (2 sigma_i^2); the numerator's terms carry lambda c = sigma^(2-q), one
        # factor sigma_i^q more (`up`)
        a = (2.0 - 2 * self.q - d) * lv.log()
        up = lv**self.q
        inv2 = 0.5 / (lv * lv)
        # the largest per-block tensors: e (L, B, c), the neighbours' distances (B, c, K) and, for the code variant,
        # its per-level weights (L_low, B, c, K)
        width = len(lv) * self.k if self.variant == "code" else max(len(lv), self.k)
        chunk = self.chunk_size or max(1, min(n, (1 << 23) // max(1, xf.shape[0] * width)))
        blocks = [slice(s0, min(n, s0 + chunk)) for s0 in range(0, n, chunk)]
        shift = torch.stack([(a[:, None, None] - r2[None, :, sl] * inv2[:, None, None]).amax(dim=(0, 2)) for sl in blocks]).amax(0)
        coef = torch.zeros_like(r2)
        denom = torch.zeros_like(shift)
        for sl in blocks:
            e = (a[:, None, None] - r2[None, :, sl] * inv2[:, None, None] - shift[None, :, None]).exp()  # (L, B, c)
            denom += e.sum(dim=(0, 2))
            e = e * up[:, None, None] if self.q else e
            hi_w = (e[~low] / (lv[~low] ** 2)[:, None, None]).sum(0)  # (B, c): plain targets (mu_j0 - x)/sigma_i^2
            coef[:, sl] += hi_w
            if bool(low.any()):
                coef += self._tempered_coef(r2, e[low], lv[low], self.table[sl])
        num = coef @ self.points - coef.sum(1, keepdim=True) * xf
        return num / denom[:, None]

    def _tempered_coef(self, r2: Tensor, e: Tensor, lv: Tensor, nbr: Tensor) -> Tensor:
        """Coefficients on the training points of ``sum_{i low, j0 in chunk} e_{i,j0} t_{i,j0}``."""
        b = r2.shape[0]
        c, k = nbr.shape
        r2n = r2[:, nbr.reshape(-1)].reshape(b, c, k)  # distances to each j0's neighbours
        if self.variant == "paper":  # target independent of sigma_i (T_j from sigma*_j)
            w, den = tempered_weights(r2n, r2n.new_ones(()), self.sigma_c, "paper", self.dim)
            per = e.sum(0)[:, :, None] * w / den  # (B, c, K)
        else:
            w, den = tempered_weights(r2n[None], lv[:, None, None, None], self.sigma_c, "code", self.dim)
            per = (e[:, :, :, None] * w / den).sum(0)
        out = torch.zeros_like(r2)
        out.scatter_add_(1, nbr.reshape(1, -1).expand(b, -1), per.reshape(b, -1))
        return out

    def field(self, x: Tensor) -> Tensor:
        """``f*(x)``: the sigma-free optimal network output."""
        return self._field(self._query(x))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D = x + sigma^2 f*`` (unconditional) or ``x + sigma f*`` (multiplicative), DESIGN.md §2."""
        s = bcast(sigma, x)
        return x + (s * s if self.q == 0 else s) * self._field(x)

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``f*(x)`` (unconditional: sigma is checked and ignored) or ``f*(x) / sigma`` (multiplicative)."""
        x, s = self.prepare(x, sigma)
        f = self._field(x)
        return f if self.q == 0 else f / bcast(s, x)
