"""Analytical teleportation (Wang & Vastola 2023; DESIGN.md §3): jump along the probability-flow ODE
of a Gaussian model in closed form, then hand over to any sampler on the rest of the same grid."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from torch import Tensor

from .._checks import Denoiser, SigmaLike, check_positive
from .common import Callback, GridLike, Seeds, grid_values

Sampler = Callable[..., Tensor]


def teleport(gaussian: Any, x: Tensor, sigma_from: SigmaLike, sigma_to: SigmaLike) -> Tensor:
    """The Gaussian probability-flow ODE solution from ``sigma_from`` to ``sigma_to`` (``gaussian.teleport``)."""
    if not callable(getattr(gaussian, "teleport", None)):
        raise ValueError(f"teleport needs a Gaussian model with a .teleport method, got {type(gaussian).__name__}")
    return gaussian.teleport(x, sigma_from, sigma_to)


def with_teleport(sampler: Sampler, gaussian: Any, sigma_skip: float) -> Sampler:
    """``sampler`` preceded by a closed-form jump from ``sigmas[0]`` to the first grid point ``<= sigma_skip``.

    The sampler then runs on the rest of the *same* grid (DESIGN.md §8: a multistep solver keeps
    its own grid rather than one rebuilt from ``sigma_skip``), so it saves exactly the evaluations
    of the skipped steps. If no grid point is ``<= sigma_skip`` the jump goes to the last one.
    Callback indices stay those of the full grid.

    Known limitation for stochastic samplers: the sampler sees only the remaining grid, so its noise
    draws restart at step 0 after the jump and Heun's churn ``S_churn / N`` uses the remaining
    number of steps. A teleported stochastic run is a valid run of that sampler, but not the
    unskipped run's noise realisation from the same seeds; deterministic samplers are unaffected.
    """
    if not callable(sampler):
        raise ValueError(f"sampler must be callable, got {type(sampler).__name__}")
    if not callable(getattr(gaussian, "teleport", None)):
        raise ValueError(f"with_teleport needs a Gaussian model with a .teleport method, got {type(gaussian).__name__}")
    skip = check_positive("sigma_skip", sigma_skip, allow_zero=True)

    @functools.wraps(sampler)
    def teleported(
        denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
        callback: Optional[Callback] = None, progress: bool = False, **options: Any,
    ) -> Tensor:
        sig = grid_values(sigmas)
        j = next((k for k, s in enumerate(sig) if s <= skip), len(sig) - 1)
        if j == 0:
            return sampler(denoiser, x, sigmas, seeds=seeds, callback=callback, progress=progress, **options)
        x = gaussian.teleport(x, sig[0], sig[j])
        if j == len(sig) - 1:
            return x
        shifted = None if callback is None else (lambda info: callback({**info, "i": info["i"] + j}))
        return sampler(denoiser, x, sigmas[j:], seeds=seeds, callback=shifted, progress=progress, **options)

    teleported.__name__ = f"{getattr(sampler, '__name__', 'sampler')}_teleport"
    teleported.__doc__ = f"{(sampler.__doc__ or '').strip()} Preceded by analytical teleportation to sigma <= {skip:g}."
    return teleported
