"""Zhou et al.'s temperature-smoothed score matching (arXiv 2601.19285, eq. 10/11) for :func:`scoredyn.train.fit`.

Below the collapse level ``sigma_c`` the network's score is trained toward the tempered target
``t`` of eq. 10 (:func:`scoredyn.analytic.tempered.tempered_target`, built from the ``K`` nearest
training points of the *clean* point, found once) instead of ``(x0 - x) / sigma^2``. In the
project's denoiser form (``scoredyn.train.loss``: ``w(sigma) |D(x, sigma) - target|^2 / d``) this is
the denoising loss with the clean point replaced by ``x + sigma^2 t``: since
``D - x - sigma^2 t = sigma^2 (s - t)``, the ``sigma2`` weighting gives ``sigma^2 |s - t|^2 / d``,
eq. 11's ``1/2 sigma^2 |s - t|^2`` up to the constant ``2 / d`` (same minimiser). Above ``sigma_c``
``x + sigma^2 t = x0`` exactly, the ordinary objective. The paper applies it to noise-unconditional
networks; any conditioning may use it. Its optimum for an unconditional network on the same discrete
levels is :class:`scoredyn.analytic.TemperedOptimum`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from torch import Tensor

from .._checks import bcast, check_positive
from ..analytic.tempered import FeatureMap, check_variant, neighbour_table, tempered_target


@dataclass(frozen=True)
class Tempering:
    """Settings of the tempered objective: collapse level ``sigma_c``, ``k`` neighbours (itself
    included), ``variant`` ``"paper"`` (eq. 10) or ``"code"`` (released code), and the neighbour
    space ``features`` (``None``: pixel space)."""

    sigma_c: float
    k: int
    variant: str = "paper"
    features: Optional[FeatureMap] = None

    def __post_init__(self) -> None:
        check_positive("sigma_c", self.sigma_c, allow_zero=True)
        check_variant(self.variant)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (the feature map by name only)."""
        d = asdict(self)
        d["features"] = None if self.features is None else getattr(self.features, "__name__", type(self.features).__name__)
        return d

    def neighbours(self, data: Tensor) -> Tensor:
        """``(N, k)`` neighbour table of the training set (exact, computed once)."""
        return neighbour_table(data, self.k, self.features)

    def denoiser_target(self, x: Tensor, sigma: Tensor, x0: Tensor, neighbours: Tensor) -> Tensor:
        """``x + sigma^2 t``: the clean-point target of the denoiser-form loss (module docstring)."""
        t = tempered_target(x, sigma.to(x.dtype), x0, neighbours, sigma_c=self.sigma_c, variant=self.variant)
        return x + bcast(sigma.to(x.dtype), x) ** 2 * t
