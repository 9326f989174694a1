"""The optimum of a score network that cannot see sigma (DESIGN.md §3 "Noise-agnostic optimum").

A network ``f(x)`` used as score ``c(sigma) f(x)`` and trained with weight ``lambda(sigma)`` over a
noise distribution ``pi`` has the pointwise optimum

    f*(x) = sum_k pi_k lambda_k c_k grad p_k(x) / sum_k pi_k lambda_k c_k^2 p_k(x).

For the empirical distribution every term is a Gaussian of the distance ``r_i = |x - x_i|``, so

    f*(x) = sum_i F_alpha(r_i^2) (x_i - x) / sum_i F_beta(r_i^2),
    F_a(q) = sum_k pi_k sigma_k^-(d + a) exp(-q / (2 sigma_k^2)),

with ``(alpha, beta) = (1, 0)`` for multiplicative conditioning (Kim 2026, arXiv 2601.12965, eq. 2.9:
``c = 1/sigma``, ``lambda = sigma^2``; ``f* = int grad p_sigma dsigma / int p_sigma / sigma dsigma``)
and ``(0, -2)`` for noise unconditioning (Zhou et al. 2026, arXiv 2601.19285: ``c = 1``,
``lambda = sigma^2``; ``f* = grad log p_MN``, ``p_MN = sum_k pi_k sigma_k^2 p_k``). ``f*`` is a
softmax over the training points with per-point logits ``log F_alpha(r_i^2)``: one streamed
log-sum-exp (:mod:`._stream`) that reuses the distances of the empirical denoiser.

Noise distributions (``t = log sigma``):
* ``levels`` given: uniform over the discrete levels (NCSNv2, Zhou et al.);
* otherwise log-uniform on ``[sigma_min, sigma_max]``, integrated in ``t`` by composite
  Gauss-Legendre (8 nodes per panel). Per point the integrand ``exp(-(d+a) t - q e^{-2t} / 2)`` is a
  peak of width ``w = 1/sqrt(2 (d + a))`` in ``t`` (interior panels of width ``1.5 w``) with
  boundary layers of rate up to ``d + a`` at the ends when the peak lies outside the range
  (a query on a training point, ``q = 0``); the end panels start at width ``2 / (d + a)`` and
  grow geometrically (ratio 2). Measured against the closed form with the regularised incomplete
  gamma function (tests/test_noise_agnostic.py) for d = 1..3072: relative error of every per-point
  integral below 1e-8 for ``q <= 4 (d + a) sigma_max^2``, i.e. for training points within
  ``2 sigma_max sqrt(d)`` of the query (every query a sampler started at ``sigma_max`` visits), and
  below 1e-6 up to ``q = 8 (d + a) sigma_max^2``. Farther out the upper boundary layer is steeper
  than the last panel and the error grows (1e-3 at ``q = 16 (d + a) sigma_max^2`` for small d);
  pass more nodes (``n_quad``) or discrete ``levels`` if such queries matter.

Pruning (Zhou et al.'s sigma-domination): the pair ``(x, x_i)`` puts its weight on the levels near
``t* = log(r_i / sqrt(d + a))``: relative to ``exp(max_t log-term)`` node ``n`` contributes exactly
``pi_n exp(-(d + a) G(t_n - t*))`` with ``G(u) = (e^{-2u} - 1 + 2u) / 2``, so the share of a
point's weight that a window of node groups around ``t*`` drops depends only on where ``t*`` falls.
:meth:`NodeGrid.window` evaluates the dropped/kept ratio at construction for every window size, at
9 peak positions in every group, for every exponent the window serves (nodes beyond the reach where
``(d + a) G > 60`` are counted as ``e^-60`` each), and keeps the smallest window with ratio
``<= 1e-9`` (``window_bound`` holds the value achieved). A peak outside the node range is no worse
than one at its end (moving it outwards steepens the integrand, shrinking the far, dropped nodes
relative to the near, kept ones). For d = 784 and 64 geometric levels on [0.01, 50] the window is
3 levels per point instead of 64 (bound 1e-11); for small ``d`` it covers every level and nothing is
dropped. Exactly geometric grids use an arithmetic window (no gathers).

Per-query windows (exactly geometric levels, CPU, float32/64): ``F_a`` is strictly decreasing in the
distance, so a query's largest weight is its nearest point's, and a ladder of distances above it,
evaluated exactly, bounds where every farther point weighs under ``eps 2^-20`` of it (the negligible-weight
rule of the sparse Empirical kernel). One window per query covering the per-point windows of all points
that can matter (4 levels for d = 784) replaces the per-point window search (:meth:`_LogF.plan`): each
level costs one broadcast multiply-add, a clamp and an ``exp2`` over the chunk (:meth:`_LogF.dense_weights`),
and where few points matter the second product runs over them alone with their weights computed for them
only (:meth:`_LogF.entry_weights`, :func:`._stream.stream_pairs`, which rescales each chunk so its
largest weight is exactly 1, as on the per-point path). Accuracy matches the per-point path's (a
superset of every mattering point's levels; float64 brute-force tests in tests/test_noise_agnostic.py,
float32 near the data 3e-8 on both paths); time 0.82-1.30x `Empirical`'s instead of 1.43-2.51x
(bench/RESULTS.md "Analytical kernel rate vs sigma", idle machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import SigmaLike, bcast, check_count, check_positive, check_query, check_range
from ._stream import log_floor, log_skip, stream_pairs, untracked
from .base import AnalyticDenoiser
from .empirical import auto_chunk, check_chunk, check_output

GL_ORDER = 8
"""Gauss-Legendre nodes per panel of the continuous quadrature."""
PANEL_WIDTHS = 1.5
"""Panel width in units of the per-point peak width ``1 / sqrt(2 (d + a))``."""
GRADING = 2.0
"""Growth ratio of the graded end panels."""
END_WIDTH = 2.0
"""Width of the first and last panel in units of ``1 / (d + a)`` (the steepest boundary layer)."""
DROP_TOL = 1e-9
"""Bound on the relative weight dropped per training point by the level window."""
SKIP_MARGIN = 1.0
"""Nats by which :meth:`_LogF.plan` widens the negligible-weight threshold (covers the window's 1e-9
relative error and the float rounding of the logits, about 1e-3 nats in float32)."""
EXTRA_NODES = 8
"""Levels beyond the per-entry window that a per-query window may add before the per-entry path runs
(each costs about 0.35 ms per 2^19 entries, the per-entry path about 9 ms: profiled, d = 784)."""
EXPONENTS = {"multiplicative": (1, 0, -1), "unconditional": (0, -2, -2)}
"""(alpha, beta, Lyapunov exponent) of ``F_a`` for each conditioning."""


def gap_penalty(u: np.ndarray) -> np.ndarray:
    """``G(u) = (e^{-2u} - 1 + 2u) / 2``: drop of ``log F`` per unit ``d + a`` at ``t* + u``."""
    u = np.asarray(u, dtype=np.float64)
    return 0.5 * (np.expm1(-2.0 * u) + 2.0 * u)


@dataclass(frozen=True)
class NodeGrid:
    """Noise levels ``t = log sigma`` with log-probabilities, in ``groups`` groups of ``per_group`` nodes.

    Group ``g`` spans ``[edges[g], edges[g+1]]``. Groups are uniform of width ``width`` except for
    ``graded`` groups at each end whose widths grow geometrically (ratio ``ratio``) from ``h_end``
    (boundary layers of the per-point integrand, rate up to ``d + a`` in ``t``).
    ``groups == 1``: no structure, every evaluation uses all nodes.
    """

    t: np.ndarray
    logw: np.ndarray
    per_group: int
    edges: np.ndarray
    width: float
    graded: int = 0
    h_end: float = 1.0
    ratio: float = 1.5
    uniform: bool = False  # one node per group at exactly t[0] + k * width (arithmetic window, no gathers)

    @property
    def groups(self) -> int:
        return len(self.edges) - 1

    @staticmethod
    def continuous(sigma_min: float, sigma_max: float, n_panels: int, h_end: Optional[float] = None) -> "NodeGrid":
        """Composite Gauss-Legendre in ``log sigma``, log-uniform weights; ``n_panels`` uniform panels
        plus, when ``h_end`` is given, geometrically graded panels at both ends starting at ``h_end``."""
        t0, length = math.log(sigma_min), math.log(sigma_max / sigma_min)
        ratio, graded, ramp = GRADING, 0, 0.0
        width = length / n_panels
        if h_end is not None and h_end < width:
            graded = math.ceil(math.log(width / h_end) / math.log(ratio))
            ramp = h_end * (ratio**graded - 1) / (ratio - 1)
            if 2 * ramp >= length:
                graded, ramp = 0, 0.0
                n_panels = max(n_panels, math.ceil(length / h_end))
            width = (length - 2 * ramp) / n_panels
        widths = [h_end * ratio**k for k in range(graded)] if graded else []
        w_all = np.array(widths + [width] * n_panels + widths[::-1])
        edges = t0 + np.concatenate([[0.0], np.cumsum(w_all)])
        edges[-1] = t0 + length
        x, w = np.polynomial.legendre.leggauss(GL_ORDER)
        xi, wi = (x + 1.0) / 2.0, w / 2.0
        span = np.diff(edges)[:, None]
        t = (edges[:-1, None] + xi[None, :] * span).ravel()
        logw = np.log(wi[None, :] * span / length).ravel()
        return NodeGrid(t, logw, GL_ORDER, edges, width, graded, h_end or 1.0, ratio)

    @staticmethod
    def discrete(levels: np.ndarray) -> "NodeGrid":
        """Uniform probabilities over the levels; one group per level when nearly geometric."""
        t = np.sort(np.log(levels))
        k = len(t)
        logw = np.full(k, -math.log(k))
        if k >= 3:
            h = (t[-1] - t[0]) / (k - 1)
            jitter = float(np.abs(t - (t[0] + h * np.arange(k))).max())
            if h > 0 and jitter <= 0.25 * h:
                return NodeGrid(t, logw, 1, t[0] + h * (np.arange(k + 1) - 0.5), h, uniform=jitter <= 1e-12 * max(1.0, abs(t).max()))
        return NodeGrid(t, logw, k, np.array([t[0] - 1.0, t[-1] + 1.0]), 1.0)

    def locate(self, tc: Tensor) -> Tensor:
        """Group index (as a float tensor) of points ``tc`` inside ``[edges[0], edges[-1]]``."""
        e0 = float(self.edges[0])
        if not self.graded:
            return tc.sub(e0).div_(self.width).floor_()
        ramp = self.h_end * (self.ratio**self.graded - 1) / (self.ratio - 1)
        length = float(self.edges[-1] - e0)
        y = tc - e0
        lr, c = math.log(self.ratio), (self.ratio - 1) / self.h_end
        low = y.clamp(max=ramp).mul_(c).log1p_().div_(lr).floor_()
        mid = (y - ramp).div_(self.width).floor_().add_(self.graded)
        top = (length - y).clamp_(max=ramp).mul_(c).log1p_().div_(lr).floor_()
        top = (self.groups - 1) - top
        return torch.where(y < ramp, low, torch.where(y > length - ramp, top, mid))

    def window(self, exponents: Sequence[float], d: int) -> tuple[int, float]:
        """Groups evaluated per training point (or all) and the largest dropped/kept weight ratio.

        For the window centred on the group of ``t*`` of ``exponents[0]`` the ratio of the dropped to
        the kept weight of one point is evaluated exactly (nodes' terms ``pi_n exp(-(d+a) G(t_n - t*))``)
        at 9 peak positions per group for every exponent; peaks outside the node range are no worse
        than at its ends (module docstring).
        """
        g_n = self.groups
        if g_n == 1 or min(d + a for a in exponents) <= 0:
            return g_n, 0.0
        centre, p = exponents[0], self.per_group
        frac = np.linspace(0.0, 1.0, 9)
        lo_t, hi_t = float(self.t[0]), float(self.t[-1])
        ms = np.arange((g_n - 1) // 2 + 1)
        worst = np.zeros(len(ms))
        # nodes farther than `reach` from every peak position contribute < e^-60 each: counted as dropped
        reach = max(math.sqrt(60.0 / (d + a)) * 2.0 + 60.0 / (d + a) for a in exponents)
        shift = max(0.5 * abs(math.log((d + centre) / (d + a))) for a in exponents)
        tail = len(self.t) * math.exp(float(self.logw.max()) - 60.0)
        for gc in range(g_n):
            g_lo = max(0, int(np.searchsorted(self.edges, self.edges[gc] - reach - shift)) - 1)
            g_hi = min(g_n, int(np.searchsorted(self.edges, self.edges[gc + 1] + reach + shift)) + 1)
            starts = np.clip(gc - ms, 0, np.maximum(g_n - (2 * ms + 1), 0))
            stops = np.minimum(starts + 2 * ms + 1, g_n)
            ts = np.clip(self.edges[gc] + frac * (self.edges[gc + 1] - self.edges[gc]), lo_t, hi_t)
            tn, lw = self.t[g_lo * p : g_hi * p], self.logw[g_lo * p : g_hi * p]
            for a in exponents:
                ta = np.clip(ts + 0.5 * math.log((d + centre) / (d + a)), lo_t, hi_t)
                terms = np.exp(lw[None, :] - (d + a) * gap_penalty(tn[None, :] - ta[:, None]))
                gsum = np.zeros((len(ta), g_hi - g_lo + 1))
                gsum[:, 1:] = np.cumsum(terms.reshape(len(ta), g_hi - g_lo, p).sum(2), 1)
                kept = gsum[:, np.clip(stops - g_lo, 0, g_hi - g_lo)] - gsum[:, np.clip(starts - g_lo, 0, g_hi - g_lo)]
                ratio = ((gsum[:, -1:] - kept + tail) / kept).max(0)
                worst = np.maximum(worst, ratio)
        for m in ms:
            if 2 * m + 1 >= g_n:
                break
            if worst[m] <= DROP_TOL:
                return 2 * m + 1, float(worst[m])
        return g_n, 0.0


class WindowPlan(NamedTuple):
    """One chunk's window of levels per query (:meth:`_LogF.plan`), base-2 log-terms relative to ``shift``."""

    shift: Tensor  # (B,) new running maximum logit
    q_thr: Tensor  # (B,) beyond this squared distance every weight is below exp(gap) (relative to exp(shift))
    gap: Tensor  # (B,) log of that bound
    a_rows: Tensor  # (B, n_w) (log pi_k - (d + alpha) t_k - shift) / log 2 of the window's levels
    b_start: Tensor  # (B,) 1 / (2 sigma^2 log 2) of the window's first level
    ratios: Tensor  # (n_w,) b_k / b_start along the window (exactly geometric levels)
    s_rows: Optional[Tensor]  # (B, n_w) rho's factor sigma_k^(alpha - beta), or None


class _LogF(torch.nn.Module):
    """Per-point ``log F_alpha(q)`` and ``rho = F_beta / F_alpha`` by a windowed sum over noise levels."""

    def __init__(self, grid: NodeGrid, d: int, alpha: float, beta: Optional[float], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        exps = [alpha] if beta is None else [alpha, beta]
        self.win_groups, self.bound = grid.window(exps, d)
        self.full = self.win_groups >= grid.groups
        self.grid, self.d, self.alpha = grid, d, alpha
        kw = dict(dtype=dtype, device=device)
        self.register_buffer("a", torch.tensor(grid.logw - (d + alpha) * grid.t, **kw), persistent=False)
        self.register_buffer("b", torch.tensor(0.5 * np.exp(-2.0 * grid.t), **kw), persistent=False)
        s = None if beta is None else torch.tensor(np.exp((alpha - beta) * grid.t), **kw)
        self.register_buffer("s", s, persistent=False)
        offs = torch.arange(self.win_groups * grid.per_group, dtype=torch.int32, device=device)
        self.register_buffer("offs", offs, persistent=False)
        # uniform grids: node (g0 + o) terms are the node-o terms of the grid's start shifted by g0 steps
        w = self.win_groups
        tw = float(grid.t[0]) + grid.width * np.arange(w)
        self.register_buffer("a0", torch.tensor(grid.logw[:w] - (d + alpha) * tw, **kw).reshape(-1, 1, 1), persistent=False)
        self.register_buffer("b0", torch.tensor(0.5 * np.exp(-2.0 * tw), **kw).reshape(-1, 1, 1), persistent=False)
        s0 = None if beta is None else torch.tensor(np.exp((alpha - beta) * tw), **kw).reshape(-1, 1, 1)
        self.register_buffer("s0", s0, persistent=False)
        self.fast = grid.uniform and not self.full and grid.per_group == 1
        self.beta = beta
        self.lt = log_floor(dtype)
        # per-query windows (:meth:`plan`, :meth:`dense_weights`): every node's log-term in base 2, and the log of rho's factor
        l2e = 1.0 / math.log(2.0)
        self.register_buffer("a2", torch.tensor((grid.logw - (d + alpha) * grid.t) * l2e, **kw), persistent=False)
        self.register_buffer("b2", torch.tensor(0.5 * np.exp(-2.0 * grid.t) * l2e, **kw), persistent=False)
        self.skip = log_skip(dtype) - SKIP_MARGIN
        self.widest = self.win_groups + EXTRA_NODES
        # ladder above q_min (:meth:`plan`): log(q / q_min) in units of the drop 2 |skip| / (d + a) that
        # -(d + a)/2 log q (the interior) needs, plus q_bottom (t* at the lowest level) for q_min near 0
        steps = np.array([0.5, 0.75, 0.9, 0.95, 1.0, 1.025, 1.05, 1.075, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 64.0])
        lam = np.exp(np.minimum(steps * 2.0 * abs(self.skip) / max(d + alpha, 1.0), 80.0))  # finite in float32
        self.register_buffer("ladder", torch.tensor(lam, dtype=torch.float64, device=device), persistent=False)
        self.q_bottom = float((d + alpha) * math.exp(2.0 * grid.t[0]))

    @property
    def nodes_per_point(self) -> int:
        return int(self.offs.numel())

    def _take(self, table: Tensor, idx: Tensor) -> Tensor:
        # int32 index_select is ~15x faster than int64 advanced indexing on CPU
        return table.index_select(0, idx.reshape(-1)).reshape(idx.shape)

    def forward(self, q: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        # node axis first: the reductions over nodes become elementwise operations on (B, c) planes
        g = self.grid
        shape = (-1,) + (1,) * q.dim()
        if self.full:
            a, b = self.a.reshape(shape), self.b.reshape(shape)
            s = None if self.s is None else self.s.reshape(shape)
        else:
            da = self.d + self.alpha
            tc = (q.log().sub_(math.log(da))).mul_(0.5).clamp_(float(g.t[0]), float(g.t[-1]))
            g0 = g.locate(tc).clamp_(0, g.groups - 1)
            g0 = g0.sub_((self.win_groups - 1) // 2).clamp_(0, g.groups - self.win_groups)
            if self.fast:
                return self._uniform(q, g0)
            idx = (g0.to(torch.int32) * g.per_group).unsqueeze(0) + self.offs.reshape(shape)
            a, b = self._take(self.a, idx), self._take(self.b, idx)
            s = None if self.s is None else self._take(self.s, idx)
        logit = a - q.unsqueeze(0) * b
        mx = logit.amax(0)
        e = logit.sub_(mx).clamp_min_(self.lt).exp_()
        z = e.sum(0)
        ell = mx.add_(z.log())
        rho = None if s is None else e.mul_(s).sum(0).div_(z)
        return ell, rho

    def plan(self, qmin: Tensor, shift: Tensor) -> Optional[WindowPlan]:
        """A window of levels per query for one chunk (:class:`WindowPlan`), or ``None`` (the per-entry path).

        ``qmin`` (B,) the chunk's smallest squared distance per query, ``shift`` (B,) the running maximum
        logit so far. ``F_a`` is strictly decreasing in ``q``, so a query's largest logit is that of its
        smallest ``q``, and beyond the first point ``q_thr`` of a ladder above ``q_min`` with
        ``log F(q_thr) <= log F(q_min) + skip`` (the same for ``F_beta``; :func:`log_skip` less
        :data:`SKIP_MARGIN` nats for the window's 1e-9 and float rounding) every weight is below
        ``eps 2^-20`` of the largest (the sparse Empirical kernel's rule, DESIGN.md §8). The window
        contains the per-entry window of every entry nearer than ``q_thr``, so those get at least the
        per-entry path's accuracy (a superset of their levels), the others a value between 0 and their
        negligible true weight. ``None`` where that needs over :attr:`widest` levels (small ``d``), for
        non-geometric grids, half precision, accelerators (the width is read on the host) and under
        autodiff transforms (``vmap`` forbids that read).
        """
        if (not self.fast or qmin.dtype not in (torch.float32, torch.float64) or qmin.device.type != "cpu"
                or not untracked(qmin)):
            return None
        g, m = self.grid, (self.win_groups - 1) // 2
        n_g, da = g.groups, self.d + self.alpha
        lam = self.ladder.to(qmin.dtype)
        ladder = torch.cat([qmin[:, None], qmin[:, None] * lam + self.q_bottom * (lam - 1.0)], 1)
        ell, rho = self.forward(ladder)
        top = ell[:, :1]
        ok = ell[:, 1:] <= top + self.skip
        gap = ell[:, 1:] - top
        if rho is not None:
            lb = ell + rho.log()
            ok &= lb[:, 1:] <= lb[:, :1] + self.skip
        if not bool(ok[:, -1].all()):
            return None
        first = ok.int().argmax(1, keepdim=True)
        q_thr = ladder[:, 1:].gather(1, first)[:, 0]
        t_of = lambda q: (q.log() - math.log(da)).mul_(0.5).clamp_(float(g.t[0]), float(g.t[-1]))  # noqa: E731
        gmin = g.locate(t_of(qmin)).clamp_(0, n_g - 1)
        span = int((g.locate(t_of(q_thr)).clamp_(0, n_g - 1) - gmin).max())
        n_w = min(n_g, self.win_groups + span)
        if n_w > self.widest:
            return None
        start = (gmin - m).clamp_(0, n_g - n_w).to(torch.int64)
        new = torch.maximum(shift, top[:, 0])
        nodes = (start[:, None] + torch.arange(n_w, device=qmin.device)).reshape(-1)
        a_rows = self.a2.index_select(0, nodes).reshape(-1, n_w).sub_((new / math.log(2.0))[:, None])
        s_rows = None if self.s is None else self.s.index_select(0, nodes).reshape(-1, n_w)
        ratios = torch.tensor([math.exp(-2.0 * g.width * o) for o in range(n_w)], dtype=qmin.dtype, device=qmin.device)
        return WindowPlan(new, q_thr, gap.gather(1, first)[:, 0] + (top[:, 0] - new), a_rows, self.b2.index_select(0, start),
                          ratios, s_rows)

    def dense_weights(self, negq: Tensor, plan: WindowPlan) -> tuple[Tensor, Optional[Tensor]]:
        """Weights ``exp(log F(q) - plan.shift)`` (B, c) of a whole chunk from ``-q`` and their row sums times rho.

        Each level: one broadcast multiply-add, a clamp and an ``exp2`` over the chunk (no per-entry
        logarithm, window search or gather; ``exp2`` ran 3x faster than ``exp`` at equal accuracy).
        """
        # out= buffers: a fresh output of an op whose first input broadcasts ran 5x slower (profiled), and
        # addcmul with broadcast factors 6x slower than a multiply and an add
        w, buf, u = (torch.empty_like(negq) for _ in range(3))
        torch.mul(negq, plan.b_start.neg()[:, None], out=u)  # u = q b_start
        floor2 = self.lt / math.log(2.0)
        wr: Optional[Tensor] = None
        for o in range(plan.a_rows.shape[1]):
            e = w if o == 0 else buf
            torch.add(plan.a_rows[:, o : o + 1], u, alpha=-float(plan.ratios[o]), out=e)
            e.clamp_min_(floor2).exp2_()
            if plan.s_rows is not None:
                part = e.sum(1).mul_(plan.s_rows[:, o])
                wr = part if wr is None else wr.add_(part)
            if o:
                w.add_(e)
        return w, wr

    def entry_weights(self, q: Tensor, rows: Tensor, plan: WindowPlan) -> tuple[Tensor, Optional[Tensor]]:
        """The weights of :meth:`dense_weights` at the entries ``(rows, q)`` alone, and their row sums times rho (B,)."""
        e = plan.a_rows.index_select(0, rows).sub_((q * plan.b_start.index_select(0, rows))[:, None] * plan.ratios)
        e = e.clamp_min_(self.lt / math.log(2.0)).exp2_()
        wr = None
        if plan.s_rows is not None:
            wr = torch.zeros(plan.a_rows.shape[0], dtype=q.dtype, device=q.device)
            wr.index_add_(0, rows, (e * plan.s_rows.index_select(0, rows)).sum(1))
        return e.sum(1), wr

    def _uniform(self, q: Tensor, g0: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Window starting at group ``g0`` of an exactly uniform grid, by arithmetic (no gathers)."""
        h = self.grid.width
        base = g0 * (-(self.d + self.alpha) * h)
        qe = torch.exp(g0 * (-2.0 * h)).mul_(q)
        logit = self.a0 - qe.unsqueeze(0) * self.b0
        mx = logit.amax(0)
        e = logit.sub_(mx).clamp_min_(self.lt).exp_()
        z = e.sum(0)
        ell = mx.add_(z.log()).add_(base)
        if self.beta is None:
            return ell, None
        rho = e.mul_(self.s0).sum(0).div_(z).mul_(torch.exp(g0 * ((self.alpha - self.beta) * h)))
        return ell, rho


class NoiseAgnostic(AnalyticDenoiser):
    """Optimal sigma-blind network ``f*(x)`` for the empirical distribution, as a denoiser.

    DESIGN.md §3 "Noise-agnostic optimum (derived)"; Kim 2026 (arXiv 2601.12965) eq. 2.9 for
    ``multiplicative`` (score ``f/sigma``, ``D = x + sigma f``), Zhou et al. 2026 (arXiv 2601.19285)
    "Noise Unconditioning" for ``unconditional`` (score ``f``, ``D = x + sigma^2 f``).

    Args:
        data: training set ``(N, *data_shape)``; the model follows its dtype and device.
        sigma_min, sigma_max: range of the log-uniform training noise (may be ``None`` with ``levels``,
            then taken from the levels; if given they must bracket the levels).
        conditioning: ``"multiplicative"`` or ``"unconditional"``.
        levels: 1-D discrete noise grid, uniform over its entries; ``None``: log-uniform.
        n_quad: Gauss-Legendre nodes of the uniform interior panels in ``log sigma`` (log-uniform
            case), rounded up to a multiple of 8; graded end panels are added (``.n_quad`` is the
            total). ``None``: panels of 1.5 peak widths (module docstring: error < 1e-8).
        chunk_size: training points per streamed chunk (``None``: automatic).
        group, device: as for :class:`~scoredyn.analytic.Empirical` (sharded data over a
            ``torch.distributed`` group; host numpy arrays streamed to ``device``).

    ``log_lyapunov(x)`` is ``log L(x)`` with ``L(x) = E_sigma[sigma p_sigma(x)]`` (multiplicative;
    ``p_sigma`` the normalised Gaussian-smoothed empirical density and ``E_sigma`` over the
    noise distribution, so ``L = (int_{sigma_min}^{sigma_max} p_sigma dsigma) / log(sigma_max /
    sigma_min)`` for the log-uniform case), for which ``f* = grad L / M`` with ``M = E_sigma[p_sigma]``
    and ``dL/dtau = |grad L|^2 / M >= 0`` along ``dx/dtau = f*``; unconditional:
    ``L(x) = E_sigma[sigma^2 p_sigma(x)] = p_MN(x)``, and ``f* = grad log p_MN``.
    """

    jacobian_mode = "jvp"
    """The streamed kernels update tensors in place (fast, but not reverse-differentiable):
    :func:`scoredyn.dynamics.jacobian` uses forward mode for :meth:`field`."""

    def __init__(
        self,
        data: Union[Tensor, np.ndarray],
        *,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        conditioning: str = "multiplicative",
        levels: Union[Tensor, Sequence[float], None] = None,
        n_quad: Optional[int] = None,
        chunk_size: Optional[int] = None,
        group: object = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        super().__init__()
        if conditioning not in EXPONENTS:
            raise ValueError(f"conditioning must be one of {sorted(EXPONENTS)}, got {conditioning!r}")
        self.conditioning = conditioning
        d = self.bind_training_set(data, device, group).dim
        self.chunk_size = check_chunk(chunk_size)
        if levels is not None:
            lv = self._check_levels(levels)
            if n_quad is not None:
                raise ValueError("n_quad applies to the log-uniform sigma distribution; omit it when levels are given")
            lo, hi = float(lv.min()), float(lv.max())
            for name, v, ok in (("sigma_min", sigma_min, lambda v: v <= lo * (1 + 1e-6)),
                                ("sigma_max", sigma_max, lambda v: v >= hi * (1 - 1e-6))):
                if v is not None and not ok(check_positive(name, v)):
                    raise ValueError(f"{name}={v} does not bracket the levels [{lo:.6g}, {hi:.6g}]; pass None or a bracketing value")
            self.sigma_min, self.sigma_max = lo, hi
            grid = NodeGrid.discrete(lv)
        else:
            if sigma_min is None or sigma_max is None:
                raise ValueError("sigma_min and sigma_max are required unless levels are given")
            lo, hi = check_range(sigma_min, sigma_max)
            self.sigma_min, self.sigma_max = lo, hi
            da = d + EXPONENTS[conditioning][0]
            if n_quad is None:
                panels = max(1, math.ceil(math.log(hi / lo) * math.sqrt(2.0 * da) / PANEL_WIDTHS))
            else:
                panels = -(-check_count("n_quad", n_quad) // GL_ORDER)
            grid = NodeGrid.continuous(lo, hi, panels, END_WIDTH / da)
        self.grid = grid
        self.n_quad = len(grid.t)
        alpha, beta, lyap = EXPONENTS[conditioning]
        ref = self.trainset.anchor
        self.field_terms = _LogF(grid, d, alpha, beta, ref.dtype, ref.device)
        self.lyapunov_terms = _LogF(grid, d, lyap, None, ref.dtype, ref.device)

    @staticmethod
    def _check_levels(levels: Union[Tensor, Sequence[float]]) -> np.ndarray:
        try:
            lv = np.asarray(levels.detach().cpu().double() if isinstance(levels, Tensor) else levels, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"levels must be a 1-D sequence of positive floats, got {type(levels).__name__}") from None
        if lv.ndim != 1 or lv.size == 0:
            raise ValueError(f"levels must be a non-empty 1-D tensor of noise levels, got shape {lv.shape}")
        if not np.all(np.isfinite(lv)) or not np.all(lv > 0):
            raise ValueError(f"levels must be finite and > 0, got min {lv.min():.3g}")
        return lv

    @property
    def window_bound(self) -> float:
        """Achieved bound on the relative weight dropped per training point by level pruning (0: none)."""
        return max(self.field_terms.bound, self.lyapunov_terms.bound)

    def _stream(self, x: Tensor, terms: _LogF):
        b = x.shape[0]
        per_row = 1 if terms.fast else terms.nodes_per_point  # the fused path holds a few (B, chunk) planes
        chunk = self.chunk_size or auto_chunk(self.trainset.n_local, per_row=per_row, device=x.device)
        return self.trainset.reduce(stream_pairs(x.reshape(b, self.dim), self.trainset.blocks(chunk), terms))

    def _query(self, x: Tensor) -> Tensor:
        ref = self._reference()
        check_query(x, self.data_shape)
        if x.device != ref.device:
            raise ValueError(f"x is on {x.device} but NoiseAgnostic holds its data on {ref.device}; move one of them")
        return x.to(ref.dtype)

    def _field(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        if b == 0:
            return x.clone()
        p = self._stream(x, self.field_terms)
        xf = x.reshape(b, self.dim)
        f = (p.wsum - p.sums[:, :1] * xf) / p.sums[:, 1:2]
        return check_output(type(self).__name__, f).reshape(x.shape)

    def field(self, x: Tensor) -> Tensor:
        """``f*(x)``: the sigma-free optimal network output (DESIGN.md §3)."""
        return self._field(self._query(x))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D = x + sigma f*`` (multiplicative) or ``x + sigma^2 f*`` (unconditional), DESIGN.md §2."""
        s = bcast(sigma, x)
        return x + (s if self.conditioning == "multiplicative" else s * s) * self._field(x)

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``f*/sigma`` (multiplicative) or ``f*`` (unconditional), without the cancellation of ``(D - x)/sigma^2``."""
        x, s = self.prepare(x, sigma)
        f = self._field(x)
        return f / bcast(s, x) if self.conditioning == "multiplicative" else f

    def log_lyapunov(self, x: Tensor) -> Tensor:
        """``log L(x)`` ``(B,)``: ``L = E_sigma[sigma p_sigma(x)]`` (multiplicative) or ``p_MN(x)`` (unconditional)."""
        x = self._query(x)
        if x.shape[0] == 0:
            return x.new_zeros(0)
        p = self._stream(x, self.lyapunov_terms)
        const = -0.5 * self.dim * math.log(2 * math.pi) - math.log(self.n_points)
        return check_output("NoiseAgnostic.log_lyapunov", p.shift + p.sums[:, 0].log() + const)
