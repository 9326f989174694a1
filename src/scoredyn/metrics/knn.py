"""Exact Euclidean k-nearest neighbours, chunked over the reference set (memory ``O(B x chunk)``).

Distances come from one matmul per chunk, ``|q|^2 + |x|^2 - 2 q.x`` (clamped at 0), with a running
top-k. That form loses the small distances to cancellation (float32 resolves ``|q - x|^2`` only to
about ``1e-7 |q|^2``), so the winners' distances are recomputed from direct differences in float64
before they are returned and re-ranked: a near copy at distance ``1e-4`` gets its true distance,
and ratios of nearest distances (the memorization criterion of Gu et al. 2023) are exact.
A few extra candidates (:data:`EXTRA_CANDIDATES`) are carried through the matmul stage so that
neighbours which rounding mis-ordered are still found.

With ``faiss`` installed (the optional extra ``scoredyn[faiss]``), CPU inputs with many reference
points can use its exact ``IndexFlatL2`` search for the candidate stage; the float64 recompute is
the same.
"""

from __future__ import annotations

import importlib.util
from typing import Iterator, Literal, Optional

import torch
from torch import Tensor

from .._checks import check_count, check_data, check_query

EXTRA_CANDIDATES = 4
"""Candidates kept beyond ``k`` in the matmul stage, re-ranked by exact float64 distances."""

BLOCK_ELEMENTS = 1 << 24
"""Default working-set size (elements) of one distance block: 64 MiB in float32."""

RERANK_ELEMENTS = 1 << 21
"""Float64 difference elements per re-ranking block (16 MiB)."""

FAISS_MIN_POINTS = 50_000
"""With ``backend="auto"``, faiss is used for CPU reference sets at least this large."""

Backend = Literal["auto", "torch", "faiss"]


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def sq_distances(q: Tensor, x: Tensor, q_sq: Optional[Tensor] = None, x_sq: Optional[Tensor] = None) -> Tensor:
    """Squared Euclidean distances ``(B, M)`` between rows of ``q (B, d)`` and ``x (M, d)``.

    One matmul (``|q|^2 + |x|^2 - 2 q.x``) clamped at 0; row norms may be passed in precomputed.
    Accurate to about ``eps * (|q|^2 + |x|^2)``: center the data first and recompute small values
    from differences where they matter.
    """
    if q_sq is None:
        q_sq = (q * q).sum(1)
    if x_sq is None:
        x_sq = (x * x).sum(1)
    d2 = torch.addmm(q_sq[:, None] + x_sq[None, :], q, x.T, beta=1.0, alpha=-2.0)
    return d2.clamp_min_(0.0)


def distance_blocks(
    q: Tensor, x: Tensor, chunk_size: Optional[int] = None, *, rank_only: bool = False
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, d2)``: squared distances ``(B, c)`` from the rows of ``q`` to ``x[start:start + c]``.

    Both inputs are centered on the mean of ``x`` (chunk by chunk, no copy of ``x``), which removes
    the cancellation caused by a common offset. ``chunk_size`` defaults to :func:`default_chunk`.
    With ``rank_only`` the blocks hold ``|x|^2 - 2 q.x`` (``|q|^2`` dropped, no clamp: the same
    order along each row) in one reused buffer, valid until the next block is drawn.
    """
    n = x.shape[0]
    chunk = default_chunk(q.shape[0], n) if chunk_size is None else min(int(chunk_size), n)
    center = x.mean(0, keepdim=True)
    qc = q - center
    q_sq = None if rank_only else (qc * qc).sum(1)
    buf = q.new_empty(q.shape[0], chunk) if rank_only else None
    for start in range(0, n, chunk):
        xb = x[start : start + chunk] - center
        xb_sq = torch.linalg.vector_norm(xb, dim=1).square()
        if buf is None:
            yield start, sq_distances(qc, xb, q_sq, xb_sq)
        else:
            yield start, torch.addmm(xb_sq[None, :], qc, xb.T, alpha=-2.0, out=buf[:, : xb.shape[0]])


def default_chunk(n_queries: int, n_points: int) -> int:
    """Reference-set chunk: the largest power of two (at least 256) with ``n_queries x chunk`` at most
    :data:`BLOCK_ELEMENTS`, capped at ``n_points`` (BLAS runs odd widths such as 1677 markedly slower)."""
    fit = max(BLOCK_ELEMENTS // max(n_queries, 1), 1)
    return min(n_points, max(256, 1 << (fit.bit_length() - 1)))


def _candidates_torch(q: Tensor, x: Tensor, kc: int, chunk_size: Optional[int]) -> Tensor:
    """Indices ``(B, kc)`` of the ``kc`` smallest matmul distances, with a running top-k over chunks.

    Once ``kc`` are held, only the rows whose chunk minimum beats their current ``kc``-th best can
    change; where they are under half of the rows ``topk`` runs over those alone (a row-minimum pass
    costs a few percent of ``topk``; issue 16: ``topk`` of every chunk was 11% of the matmul time of
    ``memorization`` of 10,000 x 60,000 MNIST-sized points).
    """
    best_d = q.new_empty(q.shape[0], 0)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
    for start, d2 in distance_blocks(q, x, chunk_size, rank_only=True):
        rows: Optional[Tensor] = None
        if best_d.shape[1] == kc:
            rows = (d2.amin(1) < best_d.amax(1)).nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            if 2 * rows.numel() >= d2.shape[0]:  # most rows change: the whole block, no copies
                rows = None
        if rows is not None:
            d, i = torch.topk(d2.index_select(0, rows), min(kc, d2.shape[1]), dim=1, largest=False, sorted=False)
            d, j = torch.topk(torch.cat([best_d.index_select(0, rows), d], 1), kc, dim=1, largest=False, sorted=False)
            i = torch.cat([best_i.index_select(0, rows), i + start], 1).gather(1, j)
            best_d.index_copy_(0, rows, d)
            best_i.index_copy_(0, rows, i)
            continue
        d, i = torch.topk(d2, min(kc, d2.shape[1]), dim=1, largest=False, sorted=False)
        best_d = torch.cat([best_d, d], dim=1)
        best_i = torch.cat([best_i, i + start], dim=1)
        if best_d.shape[1] > kc:
            best_d, j = torch.topk(best_d, kc, dim=1, largest=False, sorted=False)
            best_i = torch.gather(best_i, 1, j)
    return best_i


def _candidates_faiss(q: Tensor, x: Tensor, kc: int) -> Tensor:
    """Candidate indices from faiss's exact flat L2 index (CPU, float32)."""
    import faiss  # optional extra

    xs = x.detach().to(torch.float32).contiguous()
    center = xs.mean(0, keepdim=True)
    index = faiss.IndexFlatL2(xs.shape[1])
    index.add((xs - center).numpy())
    _, idx = index.search((q.detach().to(torch.float32) - center).contiguous().numpy(), kc)
    return torch.from_numpy(idx).to(torch.long)


def _exact_rerank(q: Tensor, x: Tensor, cand: Tensor, k: int, block: int) -> tuple[Tensor, Tensor]:
    """Float64 distances of the candidates from direct differences; the ``k`` best, ties by index."""
    out_d, out_i = [], []
    for s in range(0, q.shape[0], block):
        c = cand[s : s + block]
        diff = q[s : s + block, None, :].to(torch.float64) - x[c].to(torch.float64)
        d = torch.linalg.vector_norm(diff, dim=-1)
        c, order = torch.sort(c, dim=1)
        d = torch.gather(d, 1, order)
        d, order = torch.sort(d, dim=1, stable=True)
        out_d.append(d[:, :k])
        out_i.append(torch.gather(c, 1, order)[:, :k])
    return torch.cat(out_d), torch.cat(out_i)


def knn(
    queries: Tensor,
    data: Tensor,
    k: int = 1,
    *,
    chunk_size: Optional[int] = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest neighbours of each query among the rows of ``data`` (Euclidean).

    ``queries (B, *shape)`` and ``data (N, *shape)`` are flattened per point. Returns
    ``(distances, indices)``, both ``(B, k)`` sorted by increasing distance (ties by index);
    distances are float64, recomputed from direct differences (see the module docstring).
    ``chunk_size`` bounds the reference rows per block (memory ``O(B x chunk_size)``; default
    :func:`default_chunk`). ``backend="auto"`` uses faiss when it is installed, the inputs are on the
    CPU and ``N >= FAISS_MIN_POINTS``; ``"faiss"`` requires it; ``"torch"`` never uses it.
    """
    check_data("data", data, min_points=1)
    check_data("queries", queries, min_points=1)
    check_query(queries, tuple(data.shape[1:]), name="queries")
    return knn_checked(queries, data, k, chunk_size=chunk_size, backend=backend)


def knn_checked(
    queries: Tensor, data: Tensor, k: int, *, chunk_size: Optional[int] = None, backend: Backend = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`knn` for inputs whose values the caller has validated (finite, matching shapes)."""
    if queries.device != data.device:
        raise ValueError(f"queries are on {queries.device} but data on {data.device}; put both on one device")
    k = check_count("k", k)
    if k > data.shape[0]:
        raise ValueError(f"k={k} neighbours requested but data has only {data.shape[0]} point(s); expected k <= N")
    chunk_size = check_count("chunk_size", chunk_size, none="automatic")
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    dtype = torch.promote_types(queries.dtype, data.dtype)
    q = queries.reshape(queries.shape[0], -1).to(dtype)
    x = data.reshape(data.shape[0], -1).to(dtype)
    use_faiss = backend == "faiss" or (
        backend == "auto" and x.device.type == "cpu" and x.shape[0] >= FAISS_MIN_POINTS and faiss_available()
    )
    if use_faiss and not faiss_available():
        raise ValueError("backend='faiss' needs the faiss package (pip install 'scoredyn[faiss]')")
    if use_faiss and x.device.type != "cpu":
        raise ValueError(f"backend='faiss' runs on CPU tensors; got {x.device} (use backend='torch')")
    kc = min(x.shape[0], k + EXTRA_CANDIDATES)
    with torch.no_grad():
        cand = _candidates_faiss(q, x, kc) if use_faiss else _candidates_torch(q, x, kc, chunk_size)
        block = max(1, RERANK_ELEMENTS // (kc * x.shape[1]))
        return _exact_rerank(q, x, cand, k, block)
