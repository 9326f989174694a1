"""How much of a network's score an analytical model explains (DESIGN.md §5).

Wang & Vastola 2023, "The Hidden Linear Structure in Score-Based Models and its Application":
per noise level, the fraction of unexplained variance

    ``FUV(sigma) = E |s_ref(x, sigma) - s_model(x, sigma)|^2 / E |s_ref(x, sigma)|^2``,
    ``x = x_0 + sigma z``, ``x_0`` from the data, ``z ~ N(0, I)``,

where ``s_ref`` is the *reference* score being explained (in the paper: the trained network) and
``s_model`` the *model* explaining it (an analytical score: Gaussian, Gaussian mixture, empirical).
0 means the model explains the reference fully; 1 is what the zero score achieves.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import Tensor

from .._checks import as_sigma, bcast, check_count, check_data, check_finite
from ..sample.noise import noise, stream_seed


def _score(fn: Any, x: Tensor, sigma: Tensor, name: str) -> Tensor:
    """``fn.score(x, sigma)`` when ``fn`` has one, else ``(fn(x, sigma) - x) / sigma^2`` (a denoiser)."""
    out = fn.score(x, sigma) if hasattr(fn, "score") else fn(x, sigma)
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} returned {got}; expected a tensor of shape {tuple(x.shape)} like its input")
    s = out if hasattr(fn, "score") else (out - x) / bcast(sigma, x) ** 2
    return check_finite(f"{name} score", s)


def unexplained_variance(
    reference: Any,
    model: Any,
    x0: Tensor,
    sigmas: Union[Sequence[float], Tensor],
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> Tensor:
    """Fraction of the ``reference`` score's variance left unexplained by ``model``, per sigma.

    ``reference`` (the network, e.g. a trained denoiser) and ``model`` (the analytical score) are
    denoisers ``D(x, sigma)`` (score ``(D - x) / sigma^2``, DESIGN.md §2) or objects with a
    ``.score(x, sigma)`` method, which is preferred. ``x0 (M, *shape)`` are clean points; the ``n``
    evaluation points (default ``M``) are ``x0[i % M] + sigma z_i`` with ``z_i`` drawn from the
    per-sample seed ``stream_seed(seed, i)`` (independent of ``batch_size`` and the device) and
    shared across the sigmas. Returns a float64 tensor ``(len(sigmas),)`` on ``x0``'s device:
    ``sum_i |s_ref - s_model|^2 / sum_i |s_ref|^2`` (Wang & Vastola 2023).
    """
    check_data("x0", x0, min_points=1)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() == 0:
        raise ValueError("sigmas is empty; expected at least one noise level")
    as_sigma(sig, sig.numel(), sig)  # finite and > 0
    m = x0.shape[0]
    n = m if n is None else n
    n = check_count("n", n)
    batch_size = check_count("batch_size", batch_size)
    num = torch.zeros(sig.numel(), dtype=torch.float64, device=x0.device)
    den = torch.zeros_like(num)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(n, s + batch_size))
            x_clean = x0[(idx % m).to(x0.device)]
            z = noise([stream_seed(seed, int(i)) for i in idx], x0.shape[1:], x0.device, x0.dtype)
            for j, sj in enumerate(sig.tolist()):
                x = x_clean + sj * z
                sigma = torch.full((x.shape[0],), sj, dtype=x.dtype, device=x.device)
                s_ref = _score(reference, x, sigma, "reference")
                s_mod = _score(model, x, sigma, "model")
                num[j] += ((s_ref - s_mod).to(torch.float64) ** 2).sum()
                den[j] += (s_ref.to(torch.float64) ** 2).sum()
    if bool((den <= 0).any()):
        bad = sig[(den <= 0).cpu()].tolist()
        raise ValueError(f"the reference score is 0 at every evaluation point for sigma={bad}; the fraction is undefined")
    return num / den
