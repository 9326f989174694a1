"""Common base of the wrappers that turn an external network into a denoiser ``D(x, sigma)`` in
scoredyn's VE convention (DESIGN.md §2 and §8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import SigmaLike, as_sigma, bcast


def network_output(out: Any) -> Tensor:
    """A network's output tensor: ``out`` itself, or ``out.sample`` (diffusers' ``UNet2DOutput``)."""
    if isinstance(out, Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ValueError(f"the network returned {type(out).__name__}; expected a tensor or an object with a .sample tensor")


def first_channels(out: Tensor, x: Tensor) -> Tensor:
    """The prediction from a network output shaped like ``x``; a network that also predicts a variance
    (iDDPM's learned variance: ``2C`` output channels for ``C`` input channels) keeps its first ``C``."""
    if out.shape == x.shape:
        return out
    if out.dim() == x.dim() and out.shape[0] == x.shape[0] and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
        return out[:, : x.shape[1]]
    raise ValueError(f"the network returned shape {tuple(out.shape)}; expected {tuple(x.shape)} like its input (or 2x its channels)")


def check_network(model: Any, call: str) -> Any:
    """``model`` if it is callable; else a ValueError naming how it is called (``call``, e.g. ``"model(x, t)"``)."""
    if not callable(model):
        raise ValueError(f"{call.split('(')[0]} must be callable as {call}, got {type(model).__name__}")
    return model


PREDICTIONS = ("epsilon", "v_prediction", "sample")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def vp_denoised(x: Tensor, sigma: Tensor, out: Tensor, prediction: str) -> Tensor:
    """``D(x, sigma)`` in VE coordinates from a VP network's output ``out`` (DESIGN.md §8).

    epsilon: ``D = x - sigma eps``; v (``v = sqrt(abar) eps - sqrt(1 - abar) x0``, Salimans & Ho 2022, §4):
    ``D = x / (1 + sigma^2) - sigma v / sqrt(1 + sigma^2)``; sample: ``D = x0``.
    """
    s = bcast(sigma, x)
    if prediction == "epsilon":
        return x - s * out
    if prediction == "v_prediction":
        return x / (1 + s * s) - out * (s * torch.rsqrt(1 + s * s))
    return out


class ExternalDenoiser(nn.Module):
    """A denoiser ``D(x, sigma)`` around someone else's network; subclasses implement :meth:`denoise`.

    ``sigma_min`` and ``sigma_max`` are the noise range the network was trained on.
    """

    sigma_min: float
    sigma_max: float

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x, sigma)`` for ``sigma`` of shape ``(B,)`` in ``x``'s dtype and device."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """The denoiser ``D(x, sigma)``; ``sigma`` a float, 0-d or ``(B,)`` tensor, ``> 0``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor (B, *data_shape), got {got}")
        return self.denoise(x, as_sigma(sigma, x.shape[0], x))

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (DESIGN.md §2)."""
        s = as_sigma(sigma, x.shape[0], x)
        return (self.denoise(x, s) - x) / bcast(s, x) ** 2
