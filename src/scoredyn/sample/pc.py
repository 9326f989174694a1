"""Predictor-corrector sampling for VE models, Song et al. 2021 (score_sde, arXiv 2011.13456, §4.2, Alg. 2 and 4).

On a descending grid ``sigma_0 > ... > sigma_N`` (ending in 0 or not), level ``i`` first runs
``n_corrector`` Langevin corrector steps at ``sigma_i`` (Alg. 4: ``eps = 2 (snr |z| / |s|)^2``,
``x <- x + eps s(x, sigma_i) + sqrt(2 eps) z``), then one reverse-diffusion predictor step to
``sigma_{i+1}`` (Alg. 2: ``x <- x + (sigma_i^2 - sigma_{i+1}^2) s(x, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z``;
with ``probability_flow`` the noise-free half step ``x + (sigma_i^2 - sigma_{i+1}^2) s / 2``, the
reverse-diffusion discretisation of the probability-flow ODE in score_sde's ``ReverseDiffusionPredictor``).
With ``denoise_last`` the result is the last predictor step's mean (score_sde's ``noise_removal``).
score_sde's VE run is this sampler on ``[sigma_max, ..., sigma_min, 0]`` with ``N`` geometric levels.

One difference from score_sde: its Langevin step size uses the batch means of ``|z|`` and ``|s|``;
here they are per sample, so a sample depends on its seed alone (the two agree for a batch of one).
``noise_sampler(sigma, sigma_next)`` (as in k-diffusion) overrides the per-sample seeded noise: it is
called for each corrector step with ``(sigma_i, sigma_i)`` and for each stochastic predictor step with
``(sigma_i, sigma_{i+1})``, in that order.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .._checks import Denoiser, bcast, check_positive
from .common import Callback, GridLike, Run, Seeds

NoiseSampler = Callable[[float, float], Tensor]


def pc(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    snr: float = 0.16, n_corrector: int = 1, probability_flow: bool = False, denoise_last: bool = True,
    noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """Predictor-corrector sampler (reverse diffusion + Langevin), Song et al. 2021 Alg. 2 and 4, VE."""
    run = Run("pc", denoiser, x, sigmas, seeds, callback, progress)
    sig = run.sigmas
    snr = check_positive("snr", snr, allow_zero=True)
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be an integer >= 0, got {n_corrector!r}")
    if noise_sampler is not None and not callable(noise_sampler):
        raise ValueError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next), got {type(noise_sampler).__name__}")
    per_level = n_corrector + 1
    k = 0

    def draw(s: float, s_next: float) -> Tensor:
        z = run.noise(x, k) if noise_sampler is None else noise_sampler(s, s_next)
        return z.to(device=x.device, dtype=x.dtype)

    x_mean = x
    for i in run.steps():
        s, s_next = sig[i], sig[i + 1]
        for _ in range(n_corrector):
            score = (run.denoise(x, s) - x) / (s * s)
            z = draw(s, s)
            eps = langevin_step(score, z, snr)
            x = x + bcast(eps, x) * score
            x = x + bcast(eps.mul(2.0).sqrt(), x) * z
            k += 1
            run.guard(i, x, s, s)
        d = run.denoise(x, s)
        run.emit(i, x, d)
        var = s * s - s_next * s_next
        x_mean = x + (d - x) * ((0.5 if probability_flow else 1.0) * var / (s * s))
        if probability_flow:
            x = x_mean
        else:
            x = x_mean + draw(s, s_next) * math.sqrt(var)
        k = (i + 1) * per_level
        run.guard(i, x, s, s_next)
    return run.finish(x_mean if denoise_last else x)


def langevin_step(score: Tensor, z: Tensor, snr: float) -> Tensor:
    """Per-sample step ``eps = 2 (snr |z| / |s|)^2`` of score_sde's Langevin corrector (0 where ``s = 0``)."""
    g = torch.linalg.vector_norm(score.flatten(1), dim=1)
    n = torch.linalg.vector_norm(z.flatten(1), dim=1)
    eps = 2.0 * (snr * n / g) ** 2
    return torch.where(g > 0, eps, torch.zeros_like(eps))
