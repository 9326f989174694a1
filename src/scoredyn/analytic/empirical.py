"""The empirical (training-set) denoiser and its temperature-smoothed variant (DESIGN.md §3).

For training points ``x_1..x_N`` the exact denoiser of the delta mixture is

    D(x, sigma) = sum_i w_i x_i,   w = softmax_i( -|x - x_i|^2 / (2 sigma^2 T) ),

with ``T = 1`` the empirical score and ``T > 1`` Zhou et al.'s temperature smoothing
(arXiv 2601.19285, "Temperature Smoothing": the logits are divided by T, the Gaussian terms
are not), optionally restricted to the ``k`` nearest training points.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import SigmaLike, check_count, check_positive, on_host
from .._dist import all_gather_topk
from ._stream import stream_logits, stream_topk
from .base import AnalyticDenoiser

Temperature = Union[float, Callable[[Tensor], Union[Tensor, float]]]


ROWS_CPU = 2048
"""Rows per chunk on the CPU: 4096 fell below 0.9 of the matmul rate at B=256 (bench/RESULTS.md)."""
ROWS_ACCELERATOR = 32768
"""Rows per chunk on an accelerator: with 2048 an H200 ran the kernel at 0.20 of its two-matmul rate
(launch bound: about 10 small kernels per chunk); 8192 gave 0.59 and 30000 gave 0.70 (N=60,000, B=256,
d=784, float32, TF32 off; measured 2026-11-28, bench/RESULTS.md "GPU check")."""


def auto_chunk(n: int, per_row: int = 1, rows: Optional[int] = None, least: int = 16,
               device: Optional[torch.device] = None) -> int:
    """Training points per chunk: ``rows / per_row`` (``per_row`` terms per training point), at least
    ``least``, at most ``n``; ``rows`` defaults to :data:`ROWS_CPU` on the CPU and
    :data:`ROWS_ACCELERATOR` elsewhere. It never depends on the batch, so a query's floating-point
    summation order, and hence its result, is the same alone or in any batch on one device; extra
    memory is ``O(B x rows)`` elements."""
    if rows is None:
        rows = ROWS_CPU if device is None or torch.device(device).type == "cpu" else ROWS_ACCELERATOR
    return max(1, min(n, max(least, rows // max(per_row, 1))))


def check_chunk(chunk_size: Optional[int]) -> Optional[int]:
    """``None`` (automatic) or a positive int."""
    if chunk_size is None:
        return None
    return check_count("chunk_size", chunk_size)


def check_output(name: str, out: Tensor) -> Tensor:
    """Refuse to return NaN/Inf: say which model overflowed and what to do; and make reverse-mode
    autograd through the streamed kernel fail with a clear error (see :func:`forward_mode_only`)."""
    if on_host(out) and not bool(torch.isfinite(out).all()):  # on accelerators the samplers check (no sync)
        raise ValueError(
            f"{name} produced NaN/Inf (sigma too small for {out.dtype} at these query norms: the logits "
            f"overflow); use float64 data or a larger sigma"
        )
    return forward_mode_only(name, out)


def forward_mode_only(name: str, out: Tensor) -> Tensor:
    """Attach a hook to ``out`` that stops ``backward()`` with a clear message before torch's own
    in-place error: the streamed kernels update their exponentials in place (fast, exact in forward
    mode, not reverse-differentiable). A no-op when ``out`` does not require grad."""
    if out.requires_grad and not torch._C._functorch.is_functorch_wrapped_tensor(out):

        def refuse(grad: Tensor) -> Tensor:
            raise RuntimeError(
                f"{name} does not support reverse-mode autograd (backward/torch.autograd.grad): its streamed "
                "kernel updates tensors in place. Use forward mode instead: scoredyn.dynamics.jacobian / "
                "scoredyn.dynamics.jvp, or torch.func.jvp / torch.func.jacfwd"
            )

        out.register_hook(refuse)
    return out


class Empirical(AnalyticDenoiser):
    """Exact denoiser of the empirical distribution, ``D = sum_i softmax(-r_i^2 / (2 sigma^2 T)) x_i``.

    DESIGN.md §3 "Empirical" and "Temperature smoothing" (Zhou et al. 2026, arXiv 2601.19285).

    Args:
        data: training set ``(N, *data_shape)``; the model follows its dtype and device.
        temperature: ``T > 0`` dividing the softmax logits, or a callable ``sigma (B,) -> T``
            (e.g. the paper's ``lambda s: (sigma_c / s).clamp(min=1)``).
        chunk_size: training points per streamed chunk (``None``: about 2^19 logits per chunk).
            Extra memory is ``O(B x chunk_size)``.
        top_k: restrict the mixture to the ``k`` nearest training points (exact chunked k-NN;
            ``k >= N`` is the full mixture).
        group: a ``torch.distributed`` process group: ``data`` is this rank's shard; every rank
            calls with the same queries and gets the result over the union of the shards.
        device: where to compute when ``data`` is a host ``numpy`` array / memmap (streamed to the
            device chunk by chunk, never materialised); tensors compute on their own device.

    Numerics: the logits ``(x . x_i - |x_i|^2/2) / (sigma^2 T)`` (the per-query ``|x|^2`` term
    cancels) come out of one matrix product per chunk with the running per-query maximum folded
    in; a second product accumulates ``sum w_i x_i`` and ``sum w_i``. In float32 the logits carry
    an absolute error of about ``eps * |x| |x_i| / (sigma^2 T)``, so the result is accurate to
    roughly that relative error (use float64 data for oracles at tiny sigma).

    Derivatives in ``x``: forward mode (``torch.func.jvp``, ``jacfwd``, :func:`scoredyn.dynamics.jacobian`);
    ``backward()`` through it raises a ``RuntimeError`` that says so (the kernel works in place).
    """

    jacobian_mode = "jvp"
    """The streamed kernel updates tensors in place (fast, but not reverse-differentiable):
    :func:`scoredyn.dynamics.jacobian` uses forward mode for bound methods of this model."""

    def __init__(
        self,
        data: Union[Tensor, np.ndarray],
        temperature: Temperature = 1.0,
        chunk_size: Optional[int] = None,
        top_k: Optional[int] = None,
        *,
        group: object = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        super().__init__()
        self.bind_training_set(data, device, group)
        if callable(temperature):
            self.temperature: Temperature = temperature
        else:
            try:
                self.temperature = check_positive("temperature", float(temperature))
            except (TypeError, ValueError) as e:
                raise ValueError(f"temperature must be a positive float or a callable of sigma: {e}") from None
        self.chunk_size = check_chunk(chunk_size)
        self.top_k = check_count("top_k", top_k, none="all points")

    def temperatures(self, sigma: SigmaLike) -> Tensor:
        """``T(sigma)`` as a validated tensor of sigma's shape (a float gives a 0-d tensor in the model dtype)."""
        if not isinstance(sigma, Tensor):
            sigma = torch.tensor(check_positive("sigma", sigma), dtype=self._reference().dtype, device=self._reference().device)
        if not callable(self.temperature):
            return torch.full_like(sigma, self.temperature)
        t = self.temperature(sigma)
        t = torch.as_tensor(t, dtype=sigma.dtype, device=sigma.device)
        if t.dim() == 0:
            t = t.expand_as(sigma)
        if t.shape != sigma.shape:
            raise ValueError(f"temperature(sigma) returned shape {tuple(t.shape)}; expected a scalar or {tuple(sigma.shape)}")
        if on_host(t) and not bool((torch.isfinite(t) & (t > 0)).all()):
            raise ValueError(f"temperature(sigma) must be finite and > 0, got min {float(t.min()):.3g}")
        return t

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x, sigma)`` for validated ``x`` and ``(B,)`` sigma (Zhou et al. eq. for tempered weights)."""
        b = x.shape[0]
        if b == 0:
            return x.clone()
        xf = x.reshape(b, self.dim)
        scale = 1.0 / (sigma * sigma * self.temperatures(sigma))
        chunk = self.chunk_size or auto_chunk(self.trainset.n_local, device=x.device)
        blocks = self.trainset.blocks(chunk)
        if self.top_k is not None and self.top_k < self.n_points:
            logits, idx = stream_topk(xf, scale, blocks, self.top_k)
            pts = self.trainset.rows(idx)
            if self.trainset.group is not None:
                logits, pts = all_gather_topk(logits, pts, self.top_k, self.trainset.group)
            w = torch.softmax(logits, dim=1)
            out = torch.einsum("bk,bkd->bd", w, pts)
        else:
            p = self.trainset.reduce(stream_logits(xf, scale, blocks))
            out = p.wsum / p.sums[:, :1]
        return check_output(type(self).__name__, out).reshape(x.shape)
