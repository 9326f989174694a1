"""Training noise-level distributions p(sigma).

* ``geometric``: a uniform index over NCSN levels ``sigma_1 > ... > sigma_L`` (Song & Ermon 2020;
  Zhou et al. use discrete levels too); ``levels`` is their number (geometric grid from sigma_max
  down to sigma_min) or the levels themselves.
* ``loguniform``: ``log sigma`` uniform on ``[log sigma_min, log sigma_max]`` (Kim's continuous
  setting: the noise-agnostic optimum of DESIGN.md §3 integrates over exactly this law).
* ``lognormal``: ``log sigma ~ N(P_mean, P_std^2)``, EDM's ``P_mean = -1.2, P_std = 1.2``
  (Karras et al. 2022, Table 1); sigma_min/sigma_max are not used to draw.

A noise-agnostic network learns the optimum *of its training distribution*: to compare with
``scoredyn.analytic.NoiseAgnostic(data, sigma_min=..., sigma_max=..., conditioning=..., levels=...)`` train with
``loguniform`` (``levels=None``) or ``geometric`` with the same levels.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_count, check_positive, check_range
from ..sample.grids import sigmas_geometric

SIGMA_DISTS = ("geometric", "loguniform", "lognormal")

Levels = Union[int, Sequence[float], Tensor, None]


class SigmaDist:
    """A distribution of training noise levels; :meth:`sample` draws from a given generator."""

    def __init__(self, name: str, *, sigma_min: float, sigma_max: float, levels: Levels = None,
                 p_mean: float = -1.2, p_std: float = 1.2) -> None:
        if name not in SIGMA_DISTS:
            raise ValueError(f"unknown sigma_dist {name!r}; expected one of {', '.join(SIGMA_DISTS)}")
        self.name = name
        self.sigma_min, self.sigma_max = check_range(sigma_min, sigma_max, allow_equal=True)
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)
        self.levels: Optional[Tensor] = None
        if name == "geometric":
            if levels is None:
                raise ValueError("sigma_dist 'geometric' needs levels: their number or the noise levels themselves")
            if isinstance(levels, int):
                n = check_count("levels", levels, least=2)  # named as the caller passed it (the grid calls it n)
                self.levels = sigmas_geometric(n, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
            else:
                lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1).cpu()
                if lv.numel() == 0 or not bool(torch.isfinite(lv).all()) or bool((lv <= 0).any()):
                    raise ValueError(f"levels must be finite positive noise levels, got {lv.tolist()}")
                self.levels = lv
        elif levels is not None:
            raise ValueError(f"levels are used only with sigma_dist='geometric', not {name!r}")

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` noise levels (float64, CPU); always consumes ``n`` uniforms or normals from ``generator``."""
        if self.name == "geometric":
            assert self.levels is not None
            return self.levels[torch.randint(len(self.levels), (n,), generator=generator)]
        if self.name == "loguniform":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            return (lo + (hi - lo) * u).exp()
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.p_mean + self.p_std * z).exp()

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (recorded in checkpoints)."""
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "levels": None if self.levels is None else self.levels.tolist(),
                "p_mean": self.p_mean, "p_std": self.p_std}

