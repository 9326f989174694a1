"""VE score networks, EDM denoisers and a change of data range as denoisers ``D(x, sigma)`` (DESIGN.md §8)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from .._checks import bcast, check_positive
from .base import ExternalDenoiser, check_network, network_output


class ScoreDenoiser(ExternalDenoiser):
    """A network ``score_model(x, sigma)`` that returns the score of ``p_sigma`` at label ``sigma``
    (score_sde's VE models, NCSN): ``D = x + sigma^2 s(x, sigma)`` (Tweedie; DESIGN.md §2).

    ``sigma_min`` / ``sigma_max`` default to score_sde's CIFAR-10 VE range (0.01, 50).
    """

    def __init__(self, score_model: Callable[..., Any], *, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        super().__init__()
        self.model = check_network(score_model, "score_model(x, sigma)")
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x + bcast(sigma, x) ** 2 * network_output(self.model(x, sigma))


class EDMDenoiser(ExternalDenoiser):
    """An EDM-style module ``net(x, sigma, class_labels=None)`` that returns ``D`` itself (Karras et al.
    2022, Eq. 7; EDM's ``*Precond`` classes). ``sigma_min`` / ``sigma_max`` are read from the network when
    it has them, else EDM's defaults (0.002, 80). ``class_labels`` is passed on every call.
    """

    def __init__(
        self, net: Callable[..., Any], *, class_labels: Optional[Tensor] = None,
        sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.model = check_network(net, "net(x, sigma, class_labels)")
        self.class_labels = class_labels
        lo = sigma_min if sigma_min is not None else getattr(net, "sigma_min", 0.002)
        hi = sigma_max if sigma_max is not None else getattr(net, "sigma_max", 80.0)
        self.sigma_min = check_positive("sigma_min", float(lo))
        self.sigma_max = check_positive("sigma_max", float(hi))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return network_output(self.model(x, sigma, class_labels=self.class_labels))


class Affine(ExternalDenoiser):
    """A denoiser of data ``u`` used on data ``x = scale * u + shift`` (e.g. a model trained on [0, 1]
    used on [-1, 1]: ``scale=2, shift=-1``).

    Noise of level ``sigma`` on ``x`` is noise of level ``sigma / scale`` on ``u``, so
    ``D_x(x, sigma) = scale * D_u((x - shift) / scale, sigma / scale) + shift`` exactly.
    """

    def __init__(self, denoiser: Callable[..., Any], scale: float, shift: float = 0.0) -> None:
        super().__init__()
        self.inner = check_network(denoiser, "denoiser(x, sigma)")
        self.scale = check_positive("scale", scale)
        self.shift = float(shift)
        if self.shift != self.shift or abs(self.shift) == float("inf"):
            raise ValueError(f"shift must be finite, got {shift}")
        lo, hi = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
        if lo is not None:
            self.sigma_min = self.scale * float(lo)
        if hi is not None:
            self.sigma_max = self.scale * float(hi)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.inner((x - self.shift) / self.scale, sigma / self.scale) * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}"
