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

On the CPU :func:`stream_logits` is also *block sparse*: a query's weights over a chunk are all
below ``eps 2^-20`` (:func:`log_skip`) relative to its largest when the chunk's maximum logit is
that far below the query's final maximum (so up to 2^20 such points change no sum); the
second product is then skipped for that (query, chunk) pair (see :func:`stream_logits`), and
:func:`skip_report` bounds the mass skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import mmap
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
    """What the block-sparse kernel skipped, over the calls made inside :func:`skip_report`.

    ``pairs``: (query, chunk) pairs seen; ``skipped``: pairs whose second product was skipped;
    ``mass``: the largest, over queries and calls, upper bound on the left-out weight relative to the
    query's total weight (each skipped chunk of ``c`` points adds at most ``c exp(top - shift)``, its
    top logit against the query's final maximum; a kept chunk multiplied out over its live entries
    alone adds at most ``c exp(skip)``, :func:`log_skip`); the output's error from leaving weight
    out is at most ``mass * (max_i |x_i| + |D|)``.
    """

    def __init__(self) -> None:
        self.pairs = 0
        self.skipped = 0
        self.mass = 0.0

    def __repr__(self) -> str:
        return f"SkipReport(pairs={self.pairs}, skipped={self.skipped}, mass<={self.mass:.3g})"


_REPORT: contextvars.ContextVar[Optional[SkipReport]] = contextvars.ContextVar("scoredyn_skip_report", default=None)


@contextlib.contextmanager
def skip_report() -> Iterator[SkipReport]:
    """Debug mode: collect a :class:`SkipReport` of the block-sparse kernel's calls in this block (costs a little)."""
    rep = SkipReport()
    token = _REPORT.set(rep)
    try:
        yield rep
    finally:
        _REPORT.reset(token)


PENDING_CHUNKS = 6
"""Deferred second products are flushed when they hold this many ``B x chunk`` weight matrices."""


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

    ``sparse`` (default: on the CPU) skips provably negligible second products. A query's weights
    over a chunk are all below ``exp(skip)`` (:func:`log_skip`) relative to its largest weight when
    the chunk's top logit is ``skip`` below the query's maximum. The second product of each
    (query, chunk) pair that is not negligible against the running maximum is deferred with its
    weights; when the deferred weights are flushed (at the end, or when they hold
    :data:`PENDING_CHUNKS` chunks' worth), pairs that have become negligible against the maximum
    seen by then are dropped and the rest are multiplied out; a later chunk where over 3/4 of the
    queries are live is multiplied at once for all of them (the dense regime; the others' weights
    are clamped at the floor, as in the dense kernel). In the memorization regime (sigma below the nearest-neighbour spacing)
    a query keeps about one chunk, so the kernel costs little more than the first product.
    Skipped mass: :func:`skip_report`. The per-chunk decisions read the live count on the host,
    a device sync per chunk: accelerators take the dense path (bound by its two products there).
    """
    b, d = x.shape
    qa = logit_queries(x, scale)
    if sparse is None:
        sparse = x.device.type == "cpu"
    if sparse:
        return _SparseStream(qa, d).run(blocks)
    fl = log_floor(x.dtype)
    shift = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    acc = torch.zeros_like(qa)  # [wsum, sum, (unused)]
    first = True
    for blk in blocks:
        g = qa @ blk.T  # logits minus the current shift (0 before the first block)
        delta = g.amax(1)
        if not first:
            delta.clamp_min_(0.0)
        # subtracting the row maximum itself makes the largest weight exactly 1 even when the
        # logits are so large that shift + delta rounds
        g.sub_(delta[:, None]).clamp_min_(fl).exp_()
        if not first:
            acc.mul_(rescale_factor(-delta, torch.zeros_like(delta))[:, None])
        acc.addmm_(g, blk)
        shift = delta if first else shift + delta
        first = False
        qa[:, d] = -shift
    if first:
        raise ValueError("no training points to stream over; expected at least one")
    return Partial(shift, acc[:, d : d + 1], acc[:, :d])


def _factor(old: Tensor, new: Tensor, dtype: torch.dtype) -> Tensor:
    """``exp(old - new)`` of float64 offsets, in ``dtype``; exactly 0 below the floor."""
    arg = old - new
    return torch.where(arg < log_floor(dtype), torch.zeros_like(arg), arg.exp()).to(dtype)


class _SparseStream:
    """The block-sparse pass of :func:`stream_logits` (CPU): deferred, prunable second products.

    Shifts are tracked as float64 offsets ``cum`` (the sum of the per-chunk increments ``delta``) so
    that rescaling deferred weights by ``exp(cum_then - cum_now)`` is as exact as the dense kernel's
    chain of ``exp(-delta)`` (a difference of two rounded float32 shifts would lose ``eps |shift|``).
    """

    def __init__(self, qa: Tensor, d: int) -> None:
        b = qa.shape[0]
        self.qa, self.d, self.fl, self.skip = qa, d, log_floor(qa.dtype), log_skip(qa.dtype)
        f64 = dict(dtype=torch.float64, device=qa.device)
        self.acc = torch.zeros_like(qa)  # [wsum, sum, (unused)] relative to acc_cum
        self.acc_cum = torch.full((b,), -math.inf, **f64)
        self.pending: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []  # blk, rows, w, cum then, top
        self.size = 0
        self.report = _REPORT.get()
        self.lse = torch.full((b,), -math.inf, **f64) if self.report is not None else None

    def _skip(self, log_mass: Tensor, rows: Tensor, pairs: bool = True) -> None:
        """Record left-out weight: at most ``exp(log_mass)`` (in ``cum`` offsets) for each query in ``rows``;
        ``pairs``: whole (query, chunk) pairs were skipped (counted in the report)."""
        if self.report is None or rows.numel() == 0:
            return
        if pairs:
            self.report.skipped += rows.numel()
        lse = self.lse
        assert lse is not None
        lse.index_copy_(0, rows, torch.logaddexp(lse.index_select(0, rows), log_mass.double()))

    def _rescale(self, cum: Tensor) -> None:
        self.acc.mul_(_factor(self.acc_cum, cum, self.acc.dtype)[:, None])
        self.acc_cum = cum

    def _flush(self, cum: Tensor) -> None:
        """Multiply out the deferred weights that are not negligible against ``cum``; rescale to it."""
        self._rescale(cum)
        for blk, rows, w, then, top in self.pending:
            now = cum.index_select(0, rows)
            keep = top - now >= self.skip
            if not bool(keep.all()):
                self._skip(top[~keep] + math.log(blk.shape[0]), rows[~keep])
                rows, w, then, now = rows[keep], w[keep], then[keep], now[keep]
                if rows.numel() == 0:
                    continue
            # product first, rescale after: the weights stay >= exp(floor) (no subnormal terms)
            part = self._product(w, blk, rows, then).mul_(_factor(then, now, w.dtype)[:, None])
            self.acc.index_add_(0, rows, part)
        self.pending, self.size = [], 0

    def _product(self, w: Tensor, blk: Tensor, rows: Tensor, then: Tensor) -> Tensor:
        """``w @ blk``, or, when under 1/64 of the weights are above ``exp(skip)`` (the memorization regime,
        where a kept chunk usually holds one live point), the sum over those entries alone."""
        cut = math.exp(self.skip)
        live = w > cut
        n = int(live.sum())
        if 64 * n >= live.numel():  # a gathered term costs about as much as 30-60 multiply-adds
            return w @ blk
        # the weights left out are at most exp(skip) each, relative to the offset ``then``
        self._skip(then + math.log(blk.shape[0] * cut), rows, pairs=False)
        r, c = live.nonzero().unbind(1)
        terms = blk.index_select(0, c).mul_(w[r, c][:, None])
        return torch.zeros(w.shape[0], blk.shape[1], dtype=w.dtype, device=w.device).index_add_(0, r, terms)

    def run(self, blocks: Iterable[Tensor]) -> Partial:
        qa, d, fl = self.qa, self.d, self.fl
        b = qa.shape[0]
        shift: Optional[Tensor] = None
        cum = torch.zeros(b, dtype=torch.float64, device=qa.device)
        for blk in blocks:
            g = qa @ blk.T  # logits minus the current shift (0 before the first block)
            top = g.amax(1)  # the chunk's top logit, relative
            delta = top if shift is None else top.clamp_min(0.0)
            live = (top - delta) >= self.skip
            if shift is not None:
                cum = cum + delta.double()
            top_c = cum + (top - delta).double()  # the chunk's top in cum offsets
            if self.report is not None:
                self.report.pairs += b
            n_live = int(live.sum())  # host sync: the CPU path only
            if 4 * n_live > 3 * b and shift is not None:  # most queries live past the first chunk: dense
                g.sub_(delta[:, None]).clamp_min_(fl).exp_()
                self._rescale(cum)
                self.acc.addmm_(g, blk)
                n_live = 0
            elif n_live == b:  # the first chunk: defer its weights (no copy); most die in the sparse regime
                rows = torch.arange(b, device=qa.device)
                w = g.sub_(delta[:, None]).clamp_min_(fl).exp_()
            else:
                rows = live.nonzero()[:, 0]
                dead = (~live).nonzero()[:, 0]
                self._skip(top_c.index_select(0, dead) + math.log(blk.shape[0]), dead)
                w = g.index_select(0, rows).sub_(delta.index_select(0, rows)[:, None]).clamp_min_(fl).exp_()
            if n_live:
                self.pending.append((blk, rows, w, cum.index_select(0, rows), top_c.index_select(0, rows)))
                self.size += w.numel()
            shift = delta if shift is None else shift + delta
            qa[:, d] = -shift
            if self.size >= PENDING_CHUNKS * b * blk.shape[0]:
                self._flush(cum)
        if shift is None:
            raise ValueError("no training points to stream over; expected at least one")
        self._flush(cum)
        if self.report is not None:
            bound = (self.lse - cum).exp() / self.acc[:, d].double()  # type: ignore[operator]
            self.report.mass = max(self.report.mass, float(bound.max()))
        return Partial(shift, self.acc[:, d : d + 1], self.acc[:, :d])


def stream_pairs(x: Tensor, blocks: Iterable[Tensor], pair_fn: PairFn) -> Partial:
    """Softmax with logits ``l_i = pair_fn(|x - x_i|^2)``, optionally with a per-pair factor ``rho_i``.

    The squared distances come from one matrix product (``|x|^2`` folded in); ``sums`` has a
    second column ``sum exp(l - shift) rho`` when ``pair_fn`` returns a factor.
    """
    b, d = x.shape
    lt = log_floor(x.dtype)
    qa = x.new_zeros(b, table_width(d))
    qa[:, :d] = -2.0 * x
    qa[:, d] = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square_().to(x.dtype)
    qa[:, d + 1] = -2.0
    shift = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    acc: Optional[Tensor] = None
    for blk in blocks:
        q = (qa @ blk.T).clamp_min_(0.0)
        logit, rho = pair_fn(q)
        if acc is None:
            acc = torch.zeros(b, qa.shape[1] + (rho is not None), dtype=x.dtype, device=x.device)
        new = torch.maximum(shift, logit.amax(1))
        w = logit.sub_(new[:, None]).clamp_min_(lt).exp_()
        _accumulate(acc, shift, new)
        acc[:, : qa.shape[1]].addmm_(w, blk)
        if rho is not None:
            acc[:, -1] += (w * rho).sum(1)
        shift = new
    if acc is None:
        raise ValueError("no training points to stream over; expected at least one")
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
