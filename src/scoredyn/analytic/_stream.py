"""Streaming log-sum-exp over a training set: the shared kernel of the analytical scores.

DESIGN.md §3 and §8. A softmax-weighted average over N training points,

    sum_i exp(l_i) * [1, rho_i, x_i]   for every query,

is reduced chunk by chunk into a per-query *partial state* ``(shift, sums, wsum)`` with

    sums[:, 0] = sum_i exp(l_i - shift),  sums[:, 1] = sum_i exp(l_i - shift) rho_i (optional),
    wsum       = sum_i exp(l_i - shift) x_i,

one shift per query (its running maximum logit; a shift shared across the batch underflows
queries far from the data), so extra memory is ``O(B x chunk)``. Partial states of disjoint
parts of the training set (chunks, or torch.distributed shards) merge with :func:`combine`
or :func:`all_reduce`.

The training set is held as an *augmented table* ``(N, w)`` with rows ``[x_i, 1, -|x_i|^2 / 2, 0...]``
(see :func:`augment`; ``w`` = :func:`table_width`, ``d + 2`` padded with zero columns to a multiple of 16
for large ``d``: BLAS runs 5-12% faster on such widths than on 785 or 786), so that one matrix product gives ``a (x . x_i - |x_i|^2/2) - shift``
(the logits of the empirical softmax with the shift folded in), or the squared distances
``|x - x_i|^2``, and the second product gives ``[wsum, sums[:, 0]]`` at once.

Negligible weights (DESIGN.md §8). Exponent arguments are clamped at :func:`log_floor` (-63.8 in
float32, -144 in float64): a weight below ``exp(floor)`` relative to the largest cannot change a sum
of fewer than ``eps^-3`` terms (6e20 in float32). The floor keeps clear of two slow
paths of the CPU (profiled, issue 16): ``exp`` of an argument whose result is subnormal (float32
``log(finfo.tiny)`` itself rounds to such an argument: 35x slower than a normal ``exp``), and a
matrix product whose terms ``w_i x_i`` are subnormal (1.5x slower). The old clamp at ``log(tiny)``
hit both in the memorization regime and ran at 0.55 of the matmul rate.

On the CPU :func:`stream_logits` is also *sparse at the entry level*: a weight below ``eps 2^-20``
(:func:`log_skip`) times its query's running maximum is left out of the second product (up to 2^20
such points change no sum), which then runs as a CSR x dense product over the live entries of a chunk
(a few per query from the memorization regime up to about the nearest-neighbour scale), or densely
where too many are live; :func:`skip_report` bounds the mass left out.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import mmap
import warnings
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from .._dist import shard_offset


class Partial(NamedTuple):
    """Per-query partial state of a streamed softmax average (see module docstring)."""

    shift: Tensor  # (B,) running maximum logit (-inf when nothing was seen)
    sums: Tensor  # (B, n) sum of exp(l - shift) [ * rho ]
    wsum: Tensor  # (B, d) sum of exp(l - shift) x_i


PairFn = Callable[[Tensor], tuple[Tensor, Optional[Tensor]]]
"""Maps squared distances ``q`` (B, c) to logits ``l`` (B, c) and an optional factor ``rho`` (B, c)."""


LOG2E = 1.0 / math.log(2.0)


def log_floor(dtype: torch.dtype) -> float:
    """The clamp for exponent arguments: ``max(4 log eps, 0.75 log tiny)`` (float32 -63.8, float64 -144).

    A weight ``exp(floor)`` relative to the largest is below ``eps^4`` (so up to ``eps^-3`` such
    terms change no sum), and it times any ``|x_i| > tiny^(1/4)`` is still a normal number
    (module docstring: the CPU's subnormal slow paths).
    """
    fi = torch.finfo(dtype)
    return max(4.0 * math.log(fi.eps), 0.75 * math.log(fi.tiny))


def table_width(d: int) -> int:
    """Columns of the augmented table: ``d + 2``, past 64 rounded up to a multiple of 16 (zero padding).

    Profiled (issue 16, d = 784): the second product into 785 columns ran 12% slower than into 784
    or 800, the first over 786 terms 5% slower than over 800.
    """
    w = d + 2
    return w if w <= 64 else -(-w // 16) * 16


def augment(points: Tensor) -> Tensor:
    """``(c, d) -> (c, table_width(d))`` rows ``[x_i, 1, -|x_i|^2 / 2, 0...]`` (squared norms in float64)."""
    c, d = points.shape
    sq = torch.linalg.vector_norm(points, dim=1, dtype=torch.float64).square_().mul_(-0.5).to(points.dtype)
    out = points.new_zeros(c, table_width(d))
    out[:, :d] = points
    out[:, d] = 1.0
    out[:, d + 1] = sq
    return out


def chunks(table: Tensor, chunk: int) -> Iterable[Tensor]:
    """Row blocks of an augmented table, as views (no copies)."""
    for start in range(0, table.shape[0], chunk):
        yield table[start : start + chunk]


def log_skip(dtype: torch.dtype) -> float:
    """Below this logit gap a weight is left out by the block-sparse path: ``log(eps 2^-20)``
    (float32 -29.8, float64 -49.9): up to 2^20 points left out change a sum by under one rounding."""
    return math.log(torch.finfo(dtype).eps) - 20 * math.log(2.0)


def rescale_factor(old: Tensor, new: Tensor) -> Tensor:
    """``exp(old - new)`` (``new >= old``), exactly 0 where it is below the floor or ``old`` is -inf."""
    arg = old - new
    return torch.where(arg < log_floor(arg.dtype), torch.zeros_like(arg), arg.exp())


def _accumulate(acc: Tensor, shift: Tensor, new: Tensor) -> None:
    """Rescale an accumulator from ``shift`` to the larger ``new`` shift, in place."""
    acc.mul_(rescale_factor(shift, new)[:, None])


class SkipReport:
    """What the sparse kernel left out, over the calls made inside :func:`skip_report`.

    ``pairs``: (query, training point) pairs seen; ``skipped``: pairs left out of the second product;
    ``dense``: (call, chunk) pairs multiplied out densely; ``mass``: the largest, over queries and calls,
    upper bound on the left-out weight relative to the query's total weight (a pair is left out when its
    weight is below ``exp(skip)``, :func:`log_skip`, times the query's running maximum weight, which is
    at most its final one; the bound adds, per query and chunk, the count of left-out pairs times the
    largest of them); the output's error from leaving weight out is at most ``mass * (max_i |x_i| + |D|)``.
    """

    def __init__(self) -> None:
        self.pairs = 0
        self.skipped = 0
        self.dense = 0
        self.mass = 0.0

    def __repr__(self) -> str:
        return f"SkipReport(pairs={self.pairs}, skipped={self.skipped}, dense={self.dense}, mass<={self.mass:.3g})"


_REPORT: contextvars.ContextVar[Optional[SkipReport]] = contextvars.ContextVar("scoredyn_skip_report", default=None)


@contextlib.contextmanager
def skip_report() -> Iterator[SkipReport]:
    """Debug mode: collect a :class:`SkipReport` of the sparse kernel's calls in this block (costs a little)."""
    rep = SkipReport()
    token = _REPORT.set(rep)
    try:
        yield rep
    finally:
        _REPORT.reset(token)


LIVE_BLOCK = 32
"""Columns per block of the live-entry search: a block's maximum logit is found first (a reduction,
as fast as one pass over the logits), and only blocks that reach the threshold are compared entry by
entry (profiled, issue 16: a comparison plus ``nonzero`` over all ``256 x 2048`` logits costs 0.8 ms,
as much as two ``exp`` passes; block maxima of 32 columns cost 0.08 ms)."""

SPARSE_DENSITY = 1 / 16
"""Live fraction of a chunk's logits above which its second product is dense: a CSR x dense product
costs about 0.6 ms at 0.8% live entries against 9.5 ms for the dense one (B=256, 2048 x 800 table
rows, one thread; 3.4 ms at 3%, 8 ms at 12%)."""

SPARSE_MIN_BATCH = 64
"""Smallest batch for which :func:`stream_logits` defaults to the sparse path: below it the dozens of
small tensor operations per chunk of the live-entry search cost more than they save (measured, issue 16:
0.3-0.7x the dense kernel's speed at B = 1-32 and d = 2-64, 1.2-1.8x at B >= 64 in the memorization regime)."""


def logit_queries(x: Tensor, scale: Tensor) -> Tensor:
    """Rows ``[scale x, 0, scale, 0...]``: times an augmented row, ``scale (x . x_i - |x_i|^2 / 2)``.

    Column ``d`` (0 here) holds minus the running shift, folded into the product by :func:`stream_logits`.
    """
    b, d = x.shape
    qa = x.new_zeros(b, table_width(d))
    qa[:, :d] = x * scale[:, None]
    qa[:, d + 1] = scale
    return qa


def stream_logits(x: Tensor, scale: Tensor, blocks: Iterable[Tensor], sparse: Optional[bool] = None) -> Partial:
    """Empirical softmax ``l_i = -scale * |x - x_i|^2 / 2`` (up to a per-query constant), streamed.

    ``x`` (B, d) queries, ``scale`` (B,) positive (``1 / (sigma^2 T)``), ``blocks`` augmented row
    blocks (:func:`augment`). The logits and the running shift come out of the first matrix product.

    ``sparse`` (default: on the CPU for at least :data:`SPARSE_MIN_BATCH` queries) leaves provably
    negligible entries out of the second product: a weight below ``exp(skip)`` (:func:`log_skip`,
    float32 ``eps 2^-20``) times the query's running maximum cannot change a sum of up to 2^20 such terms. Where under :data:`SPARSE_DENSITY` of a
    chunk's weights reach that (the memorization regime and its edge, sigma up to about the
    nearest-neighbour spacing / sqrt(d): a few live entries per query) the chunk's second product is a
    CSR x dense product over the live entries alone; a chunk past the first that is denser switches
    the rest of the call to the dense product (no more checks). Skipped mass: :func:`skip_report`.
    The density check reads a count on the host (a device sync per chunk): accelerators default to
    the dense path. Under autodiff (``torch.func.jvp`` / ``jacfwd`` / ``vmap``, forward-mode dual
    tensors) and in half precision the product is dense: torch's CSR x dense product supports
    none of them.
    """
    b, d = x.shape
    qa = logit_queries(x, scale)
    if sparse is None:
        sparse = x.device.type == "cpu" and b >= SPARSE_MIN_BATCH
    live = _LiveProduct(b, x.dtype, x.device) if sparse and untracked(qa) and x.dtype in _CSR_DTYPES else None
    fl = log_floor(x.dtype)
    shift: Optional[Tensor] = None
    acc = torch.zeros_like(qa)  # [wsum, sum, (unused)]
    g: Optional[Tensor] = None
    reuse = untracked(qa)  # one logits buffer for all chunks (forward-mode AD has no out= products)
    for blk in blocks:
        # logits minus the current shift (0 before the first block)
        if not reuse:
            g = qa @ blk.T
        else:
            if g is None or g.shape[1] != blk.shape[0]:
                g = qa.new_empty(b, blk.shape[0])
            torch.mm(qa, blk.T, out=g)
        top = g.amax(1)
        # the increment of the running maximum; subtracting the row maximum itself makes the largest
        # weight exactly 1 even when the logits are so large that shift + delta rounds
        delta = top if shift is None else top.clamp_min(0.0)
        if shift is not None:
            acc.mul_(rescale_factor(-delta, torch.zeros_like(delta))[:, None])
        if live is None or not live.product(acc, g, delta, blk, first=shift is None):
            # exp(a) as exp2(a / log 2): exp2 ran 3x faster than exp (profiled), the scaling of the small
            # argument adds a relative error of a few eps to a weight, as exp's own rounding does
            acc.addmm_(g.sub_(delta[:, None]).clamp_min_(fl).mul_(LOG2E).exp2_(), blk)
        shift = delta if shift is None else shift + delta
        qa[:, d] = -shift
    if shift is None:
        raise ValueError("no training points to stream over; expected at least one")
    if live is not None:
        live.finish(acc[:, d])
    return Partial(shift, acc[:, d : d + 1], acc[:, :d])


def untracked(t: Tensor) -> bool:
    """Whether no autodiff of any kind (reverse, forward-mode dual, ``torch.func`` transform) tracks ``t``."""
    return not (t.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(t)
                or torch.autograd.forward_ad.unpack_dual(t).tangent is not None)


def live_entries(g: Tensor, thr: Tensor, most: int) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """Entries of ``g`` (B, c) with ``g >= thr`` (per row): ``(rows, cols, values)`` in row-major order,
    or ``None`` when there are more than ``most``. Blocks of :data:`LIVE_BLOCK` columns are searched
    first; where over half of them are live (a few live entries spread over many blocks, as in the
    transition regime) one comparison over the whole chunk does it."""
    b, c = g.shape
    n_blk = c // LIVE_BLOCK
    head = n_blk * LIVE_BLOCK
    big = (g[:, :head].reshape(b, n_blk, LIVE_BLOCK).amax(2) >= thr[:, None]).nonzero()
    if big.shape[0] > most or 10 * big.shape[0] > 9 * b * n_blk:  # each live block holds a live entry;
        return None  # nearly all blocks live: at least 1/36 of the entries, too dense to gain much (dense regime)
    if big.shape[0] * LIVE_BLOCK > g.numel() // 2:  # most blocks live: one pass over the whole chunk
        live = g >= thr[:, None]
        if int(torch.count_nonzero(live)) > most:  # not live.sum(): that copies the mask to int64 (1.7 ms)
            return None
        rows, cols = live.nonzero().unbind(1)
        return rows, cols, g[rows, cols]
    rb, cb = big.unbind(1)
    sub = g[:, :head].reshape(b * n_blk, LIVE_BLOCK).index_select(0, rb * n_blk + cb)
    i, j = (sub >= thr.index_select(0, rb)[:, None]).nonzero().unbind(1)
    rows, cols, vals = rb.index_select(0, i), cb.index_select(0, i) * LIVE_BLOCK + j, sub[i, j]
    if head < c:  # the last columns of a chunk whose width is not a multiple of the block
        r2, c2 = (g[:, head:] >= thr[:, None]).nonzero().unbind(1)
        if r2.numel():
            rows, cols = torch.cat([rows, r2]), torch.cat([cols, c2 + head])
            vals = torch.cat([vals, g[r2, c2 + head]])
            order = (rows * c + cols).argsort()
            rows, cols, vals = rows[order], cols[order], vals[order]
    return None if rows.numel() > most else (rows, cols, vals)


_CSR_WARNED = False
_CSR_DTYPES = (torch.float32, torch.float64)  # the CPU CSR x dense product has no half-precision kernel


def _csr(crow: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR matrix without torch's one-time "CSR support is in beta" warning (silenced on the first call only)."""
    global _CSR_WARNED
    if _CSR_WARNED:
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)
    _CSR_WARNED = True
    return out


class _LiveProduct:
    """The sparse second product of :func:`stream_logits` (see there), with its :class:`SkipReport` bookkeeping.

    The report tracks each query's shift as a float64 sum of the increments ``cum`` and the
    log of its left-out weight bound ``lse`` in the same offsets.
    """

    def __init__(self, b: int, dtype: torch.dtype, device: torch.device) -> None:
        self.skip, self.fl, self.dense, self.seen = log_skip(dtype), log_floor(dtype), False, 0
        self.report = _REPORT.get()
        if self.report is not None:
            self.cum = torch.zeros(b, dtype=torch.float64, device=device)
            self.lse = torch.full((b,), -math.inf, dtype=torch.float64, device=device)

    def product(self, acc: Tensor, g: Tensor, delta: Tensor, blk: Tensor, first: bool) -> bool:
        """``acc += exp(g - delta) @ blk`` over the live entries of ``g``; ``False`` (nothing done) when dense."""
        b, c = g.shape
        rep = self.report
        if rep is not None:
            self.cum = delta.double() if first else self.cum + delta.double()
            rep.pairs += g.numel()
        found = None if self.dense else live_entries(g, delta + self.skip, int(g.numel() * SPARSE_DENSITY))
        if found is None:
            self.dense = not first  # past the first chunk (whose running maximum is its own) dense stays dense
            if rep is not None:
                rep.dense += 1
            return False
        rows, cols, vals = found
        vals.sub_(delta.index_select(0, rows)).clamp_min_(self.fl).exp_()
        counts = torch.bincount(rows, minlength=b)
        crow = torch.zeros(b + 1, dtype=torch.long, device=g.device)
        torch.cumsum(counts, 0, out=crow[1:])
        acc.addmm_(_csr(crow, cols, vals, (b, c)), blk)
        if rep is not None:  # each left-out weight is at most its row's largest left-out one
            left = (c - counts).double()
            rep.skipped += int(left.sum())
            top_left = torch.where(g < (delta + self.skip)[:, None], g, -math.inf).amax(1) - delta
            self.lse = torch.logaddexp(self.lse, left.log() + top_left.double() + self.cum)
        return True

    def search(self, g: Tensor, thr: Tensor) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """:func:`live_entries` of ``g`` against ``thr`` (B,) with the dense bookkeeping of :meth:`product`."""
        rep = self.report
        if rep is not None:
            rep.pairs += g.numel()
        found = None if self.dense else live_entries(g, thr, int(g.numel() * SPARSE_DENSITY))
        self.seen += 1
        if found is None:
            self.dense = self.seen > 1  # as in product(): past the first chunk, dense stays dense
            if rep is not None:
                rep.dense += 1
        return found

    def product_entries(self, acc: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, blk: Tensor, shift: Tensor,
                        top_left: Tensor) -> None:
        """``acc += W @ blk`` for the sparse weights ``W[rows, cols] = vals`` (relative to ``exp(shift)``, the
        running maximum); every left-out weight of row ``r`` is at most ``exp(top_left[r])``."""
        b, c = acc.shape[0], blk.shape[0]
        counts = torch.bincount(rows, minlength=b)
        crow = torch.zeros(b + 1, dtype=torch.long, device=acc.device)
        torch.cumsum(counts, 0, out=crow[1:])
        acc.addmm_(_csr(crow, cols, vals, (b, c)), blk)
        if self.report is not None:
            self.cum = shift.double()
            left = (c - counts).double()
            self.report.skipped += int(left.sum())
            self.lse = torch.logaddexp(self.lse, left.log() + top_left.double() + self.cum)

    def finish(self, total: Tensor) -> None:
        """Record the left-out mass bound against each query's total weight ``total`` (relative to its final shift)."""
        if self.report is not None:
            bound = (self.lse - self.cum).exp() / total.double()
            self.report.mass = max(self.report.mass, float(bound.max()))


def _exact_top(planned: Tensor, shift: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
    """The running maximum logit after a chunk weighted by a plan, and the factor to divide its weights by.

    A plan's weights are ``exp(l - planned)`` by arithmetic whose largest term rounds to ``1 +- k eps``,
    not the exact ``exp(0) = 1`` of the per-entry path; where one training point dominates, ``x_i - x``
    then loses ``eps |x_i| / sigma_min`` (measured: 2e-5 against 3e-8 near MNIST-like data). Where this
    chunk holds the running maximum, the shift moves to ``planned + log(top)`` and the weights are divided
    by ``top`` itself, so the largest becomes exactly 1; elsewhere it stays at the previous ``shift`` (a
plan's own shift would rescale the sums by a factor that rounds away from 1)."""
    cand = planned + top.log()  # -inf where the chunk has no weight: then the shift stays
    here = (top > 0) & (cand >= shift)
    new = torch.maximum(shift, cand)
    new = torch.where(new == -math.inf, planned, new)  # nothing weighed yet
    f = torch.where(here, top, (new - planned).exp())
    return new, f


def stream_pairs(x: Tensor, blocks: Iterable[Tensor], pair_fn: PairFn, sparse: Optional[bool] = None) -> Partial:
    """Softmax with logits ``l_i = pair_fn(|x - x_i|^2)``, optionally with a per-pair factor ``rho_i``.

    The squared distances come from one matrix product (``|x|^2`` folded in); ``sums`` has a
    second column ``sum exp(l - shift) rho`` when ``pair_fn`` returns a factor. A ``pair_fn`` with methods
    ``plan(q_min, shift)`` (``q_min`` the running smallest squared distance; ``None``: the call above for this chunk), ``dense_weights(-q, plan)`` and
    ``entry_weights(q, rows, plan)`` (both ``-> (weights, row sums of weights * rho or None)``) computes a
    chunk's weights itself from a per-query plan (the level windows of
    :class:`~scoredyn.analytic.noise_agnostic.NoiseAgnostic`): ``plan.shift`` the new running maximum logit,
    ``plan.q_thr`` beyond which every weight is below ``exp(plan.gap)`` (``<= exp(log_skip)``) relative to
    it. ``sparse`` (default as in :func:`stream_logits`) then runs the second product over the entries
    nearer than ``q_thr`` alone where they are few, their weights computed for them only (:func:`skip_report`).
    """
    b, d = x.shape
    lt = log_floor(x.dtype)
    qa = x.new_zeros(b, table_width(d))
    qa[:, :d] = -2.0 * x
    qa[:, d] = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square_().to(x.dtype)
    qa[:, d + 1] = -2.0
    shift = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    acc: Optional[Tensor] = None
    planner = getattr(pair_fn, "plan", None)
    if sparse is None:
        sparse = x.device.type == "cpu" and b >= SPARSE_MIN_BATCH
    live = _LiveProduct(b, x.dtype, x.device) if sparse and untracked(qa) and x.dtype in _CSR_DTYPES else None
    qa.neg_()  # the product gives -|x - x_i|^2: larger is nearer, as the live-entry search expects
    width = qa.shape[1]
    qrun: Optional[Tensor] = None
    for blk in blocks:
        g = qa @ blk.T
        if planner is not None:  # the running smallest squared distance: its logit is the running maximum
            cmin = g.amax(1).neg_().clamp_min_(0.0)
            qrun = cmin if qrun is None else torch.minimum(qrun, cmin)
        plan = None if planner is None else planner(qrun, shift)
        if plan is not None:
            found = None if live is None else live.search(g, plan.q_thr.neg())
            # rounding in the product can make a squared distance slightly negative: clamp at 0 as the path below
            if found is not None:
                rows, cols, vals = found
                w, wr = pair_fn.entry_weights(vals.neg_().clamp_min_(0.0), rows, plan)
                top = w.new_zeros(b).scatter_reduce_(0, rows, w, reduce="amax")
            else:
                w, wr = pair_fn.dense_weights(g.clamp_max_(0.0), plan)
                top = w.amax(1)
            new, f = _exact_top(plan.shift, shift, top)
            w.div_(f.index_select(0, rows) if found is not None else f[:, None])
            if wr is not None:
                wr.div_(f)
        else:
            logit, rho = pair_fn(g.neg_().clamp_min_(0.0))
            new = torch.maximum(shift, logit.amax(1))
            w = logit.sub_(new[:, None]).clamp_min_(lt).exp_()
            wr, found = None if rho is None else (w * rho).sum(1), None
        if acc is None:
            acc = torch.zeros(b, width + (wr is not None), dtype=x.dtype, device=x.device)
        _accumulate(acc, shift, new)
        if found is not None:
            live.product_entries(acc[:, :width], found[0], found[1], w, blk, new, plan.gap + (plan.shift - new))
        else:
            acc[:, :width].addmm_(w, blk)
        if wr is not None:
            acc[:, -1] += wr
        shift = new
    if acc is None:
        raise ValueError("no training points to stream over; expected at least one")
    if live is not None:
        live.finish(acc[:, d])
    sums = acc[:, d : d + 1] if acc.shape[1] == qa.shape[1] else torch.stack([acc[:, d], acc[:, -1]], 1)
    return Partial(shift, sums, acc[:, :d])


def combine(a: Partial, b: Partial) -> Partial:
    """Merge the partial states of two disjoint parts of the training set."""
    new = torch.maximum(a.shift, b.shift)
    out = []
    for p in (a, b):
        acc = torch.cat([p.sums, p.wsum], 1)
        _accumulate(acc, p.shift, new)
        out.append(acc)
    acc = out[0] + out[1]
    n = a.sums.shape[1]
    return Partial(new, acc[:, :n], acc[:, n:])


def all_reduce(p: Partial, group: object = None) -> Partial:
    """Combine the partial states of all ranks of a ``torch.distributed`` group (DESIGN.md §7).

    One all-reduce MAX of the shifts, a local rescale, one all-reduce SUM of ``[sums, wsum]``.
    """
    import torch.distributed as dist

    shift = p.shift.clone()
    dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    acc = torch.cat([p.sums, p.wsum], 1)
    _accumulate(acc, p.shift, shift)
    dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=group)
    n = p.sums.shape[1]
    return Partial(shift, acc[:, :n], acc[:, n:])


def stream_topk(x: Tensor, scale: Tensor, blocks: Iterable[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Exact k nearest training points by chunked search: their logits ``(B, k')`` and row indices.

    Logits as in :func:`stream_logits` without a shift (``k' = min(k, N)``); the order is by distance.
    """
    b, d = x.shape
    qa = logit_queries(x, scale)
    vals = torch.empty(b, 0, dtype=x.dtype, device=x.device)
    idx = torch.empty(b, 0, dtype=torch.long, device=x.device)
    offset = 0
    for blk in blocks:
        g = qa @ blk.T
        rows = torch.arange(offset, offset + blk.shape[0], device=x.device).expand(b, -1)
        offset += blk.shape[0]
        vals = torch.cat([vals, g], 1)
        idx = torch.cat([idx, rows], 1)
        if vals.shape[1] > k:
            vals, pos = vals.topk(k, dim=1)
            idx = idx.gather(1, pos)
    return vals, idx


def release_pages(view: np.ndarray) -> None:
    """Drop a chunk of a ``numpy.memmap`` that has been read from this process's resident set.

    Pages of a memory-mapped file stay mapped (and counted as resident) once touched; advising
    ``MADV_DONTNEED`` unmaps them again (the kernel keeps them in its page cache, so a second pass is
    still fast). Without this, streaming a file larger than memory would grow the process to the
    file's size. A no-op for ordinary arrays and where ``madvise`` is not available.
    """
    mm = getattr(view, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    start = view.__array_interface__["data"][0] - base
    aligned = start - start % mmap.PAGESIZE
    length = min(view.nbytes + (start - aligned), len(mm) - aligned)
    if length > 0:
        mm.madvise(mmap.MADV_DONTNEED, aligned, length)


def check_array(name: str, arr: np.ndarray, rows: int = 16384) -> None:
    """Validate a host training set ``(N, *shape)`` (``numpy.ndarray`` / ``numpy.memmap``) block by block."""
    if arr.ndim < 2 or arr.shape[0] < 1 or int(np.prod(arr.shape[1:])) == 0:
        raise ValueError(f"{name} must have shape (N, *data_shape) with N >= 1 and non-empty points, got {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        finite = bool(np.isfinite(block).all())
        release_pages(block)
        if not finite:
            raise ValueError(f"{name} contains NaN/Inf in rows {start}..{min(start + rows, arr.shape[0]) - 1}; expected finite values")


def array_blocks(arr: np.ndarray, chunk: int, device: torch.device, dtype: torch.dtype) -> Iterator[Tensor]:
    """Augmented blocks of a host array, copied to ``device`` one chunk at a time (never materialised whole)."""
    n = arr.shape[0]
    pin = device.type == "cuda"
    for start in range(0, n, chunk):
        # a copy of one chunk (read-only memmaps cannot back a tensor); the whole array is never read at once
        view = arr[start : start + chunk]
        host = torch.from_numpy(np.array(view, order="C").reshape(min(chunk, n - start), -1))
        release_pages(view)
        if pin:
            host = host.pin_memory()
        yield augment(host.to(device=device, dtype=dtype, non_blocking=pin))


class TrainingSet(torch.nn.Module):
    """The training points of an analytical score, streamed in augmented blocks.

    ``data``: a tensor ``(N, *shape)`` (kept as an augmented table buffer on its device), or a host
    ``numpy.ndarray`` / ``numpy.memmap`` (kept on the host and copied to ``device`` one chunk per
    step, so a set larger than memory works; float64 arrays give a float64 model, others float32).
    ``group``: a ``torch.distributed`` process group (DESIGN.md §7); each rank passes its shard and
    :meth:`reduce` combines the per-query partial states with one all-reduce pair.
    """

    def __init__(self, data: object, device: Optional[object] = None, group: object = None) -> None:
        super().__init__()
        from .._checks import check_data

        if isinstance(data, np.ndarray):
            check_array("data", data)
            self.array: Optional[np.ndarray] = data
            dtype = torch.float64 if data.dtype == np.float64 else torch.float32
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self.register_buffer("anchor", torch.empty(0, dtype=dtype, device=dev), persistent=False)
            self.register_buffer("table", None, persistent=False)
            shape = tuple(data.shape)
        else:
            check_data("data", data)  # type: ignore[arg-type]
            if device is not None and torch.device(device) != data.device:  # type: ignore[union-attr]
                raise ValueError(f"device={device} but data is on {data.device}; move the data or omit device")  # type: ignore[union-attr]
            self.array = None
            self.register_buffer("anchor", torch.empty(0, dtype=data.dtype, device=data.device), persistent=False)  # type: ignore[union-attr]
            self.register_buffer("table", augment(data.detach().reshape(data.shape[0], -1)), persistent=False)  # type: ignore[union-attr]
            shape = tuple(data.shape)  # type: ignore[union-attr]
        self.data_shape = shape[1:]
        self.n_local = shape[0]
        self.dim = int(np.prod(self.data_shape))
        self.group = group
        self.n_points = self.n_local if group is None else shard_offset(self.n_local, self.anchor.device, group)[1]

    def blocks(self, chunk: int) -> Iterable[Tensor]:
        """Augmented ``(c, d + 2)`` blocks of the local training points."""
        if self.array is None:
            return chunks(self.table, chunk)
        return array_blocks(self.array, chunk, self.anchor.device, self.anchor.dtype)

    def rows(self, idx: Tensor) -> Tensor:
        """Training points ``(B, k, d)`` at local row indices ``idx`` ``(B, k)``."""
        if self.array is None:
            return self.table[idx, : self.dim]
        flat = np.ascontiguousarray(self.array[idx.cpu().numpy().ravel()]).reshape(idx.numel(), self.dim)
        return torch.from_numpy(flat).to(self.anchor.device, self.anchor.dtype).reshape(*idx.shape, self.dim)

    def reduce(self, p: Partial) -> Partial:
        """Combine the partial states of all ranks (identity without a group)."""
        return p if self.group is None else all_reduce(p, self.group)
