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

The training set is held as an *augmented table* ``(N, d + 2)`` with rows ``[x_i, 1, -|x_i|^2 / 2]``
(see :func:`augment`), so that one matrix product gives ``a (x . x_i - |x_i|^2/2) - shift``
(the logits of the empirical softmax with the shift folded in), or the squared distances
``|x - x_i|^2``, and the second product gives ``[wsum, sums[:, 0]]`` at once.

Exponentials are taken of arguments clamped to ``log(finfo.tiny)`` (about -87.3 in float32): CPU
``exp`` runs a slow path (about 20-40x slower here) for results that underflow to subnormals or 0;
such weights are below ``1e-38`` relative to the largest and do not change any sum.
"""

from __future__ import annotations

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


def log_tiny(dtype: torch.dtype) -> float:
    """``log`` of the smallest normal number of ``dtype``: the clamp for exponent arguments."""
    return math.log(torch.finfo(dtype).tiny)


def augment(points: Tensor) -> Tensor:
    """``(c, d) -> (c, d + 2)`` rows ``[x_i, 1, -|x_i|^2 / 2]`` (squared norms accumulated in float64)."""
    sq = torch.linalg.vector_norm(points, dim=1, dtype=torch.float64).square_().mul_(-0.5).to(points.dtype)
    one = torch.ones_like(sq)
    return torch.cat([points, one[:, None], sq[:, None]], dim=1)


def chunks(table: Tensor, chunk: int) -> Iterable[Tensor]:
    """Row blocks of an augmented table, as views (no copies)."""
    for start in range(0, table.shape[0], chunk):
        yield table[start : start + chunk]


def _accumulate(acc: Tensor, shift: Tensor, new: Tensor) -> None:
    """Rescale an accumulator from ``shift`` to the larger ``new`` shift, in place."""
    scale = (shift - new).clamp_min_(log_tiny(acc.dtype)).exp_()
    scale = torch.where(torch.isneginf(shift), torch.zeros_like(scale), scale)
    acc.mul_(scale[:, None])


def stream_logits(x: Tensor, scale: Tensor, blocks: Iterable[Tensor]) -> Partial:
    """Empirical softmax ``l_i = -scale * |x - x_i|^2 / 2`` (up to a per-query constant), streamed.

    ``x`` (B, d) queries, ``scale`` (B,) positive (``1 / (sigma^2 T)``), ``blocks`` augmented row
    blocks ``(c, d + 2)``. The logits and the running shift come out of the first matrix product.
    """
    b, d = x.shape
    lt = log_tiny(x.dtype)
    qa = torch.empty(b, d + 2, dtype=x.dtype, device=x.device)
    qa[:, :d] = x * scale[:, None]
    qa[:, d] = 0.0  # minus the shift folded into the product
    qa[:, d + 1] = scale
    shift = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    acc = torch.zeros(b, d + 1, dtype=x.dtype, device=x.device)  # [wsum, sum]
    for blk in blocks:
        g = qa @ blk.T  # logits minus the current shift (0 before the first block)
        first = torch.isneginf(shift)
        delta = g.amax(1)
        delta = torch.where(first, delta, delta.clamp_min(0.0))
        # subtracting the row maximum itself makes the largest weight exactly 1 even when the
        # logits are so large that shift + delta rounds
        g.sub_(delta[:, None]).clamp_min_(lt).exp_()
        scale = torch.where(first, torch.zeros_like(delta), (-delta).clamp_min(lt).exp())
        acc.mul_(scale[:, None]).addmm_(g, blk[:, : d + 1])
        shift = torch.where(first, delta, shift + delta)
        qa[:, d] = -shift
    return Partial(shift, acc[:, d:], acc[:, :d])


def stream_pairs(x: Tensor, blocks: Iterable[Tensor], pair_fn: PairFn) -> Partial:
    """Softmax with logits ``l_i = pair_fn(|x - x_i|^2)``, optionally with a per-pair factor ``rho_i``.

    The squared distances come from one matrix product (``|x|^2`` folded in); ``sums`` has a
    second column ``sum exp(l - shift) rho`` when ``pair_fn`` returns a factor.
    """
    b, d = x.shape
    lt = log_tiny(x.dtype)
    qa = torch.empty(b, d + 2, dtype=x.dtype, device=x.device)
    qa[:, :d] = -2.0 * x
    qa[:, d] = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square_().to(x.dtype)
    qa[:, d + 1] = -2.0
    shift = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    acc: Optional[Tensor] = None
    for blk in blocks:
        q = (qa @ blk.T).clamp_min_(0.0)
        logit, rho = pair_fn(q)
        if acc is None:
            acc = torch.zeros(b, d + 1 + (rho is not None), dtype=x.dtype, device=x.device)
        new = torch.maximum(shift, logit.amax(1))
        w = logit.sub_(new[:, None]).clamp_min_(lt).exp_()
        _accumulate(acc, shift, new)
        acc[:, : d + 1].addmm_(w, blk[:, : d + 1])
        if rho is not None:
            acc[:, d + 1] += (w * rho).sum(1)
        shift = new
    if acc is None:
        raise ValueError("no training points to stream over; expected at least one")
    return Partial(shift, acc[:, d:], acc[:, :d])


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
    qa = torch.empty(b, d + 2, dtype=x.dtype, device=x.device)
    qa[:, :d] = x * scale[:, None]
    qa[:, d] = 0.0
    qa[:, d + 1] = scale
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
