"""The quality gate every trained network passes before its numbers enter a claim.

A network "samples the data" when (thresholds in :mod:`scoredyn.studies.thresholds`):

* its samples are close to the data: FID on the feature net <= ``GATE_FID`` x the floor (the FID of
  as many training images against the same held-out images), or for 2-D points, sliced W2 <=
  ``GATE_SW`` x that of an independent draw from the data distribution;
* they lie on the data: median nearest-neighbour distance to the training set <= ``GATE_NN`` x
  that of held-out data (copies pass: a memorizing network samples its training data);
* where an exact optimum of its training loss exists, it has learned more than the Gaussian
  (linear) denoiser: the loss gap closed from the Gaussian's loss toward the optimum's, at the same
  fixed draws, is >= ``GATE_GAP``.

How to declare a network: train it in a cached stage, sample it with the study's own sampler, then
``gate = judge_network("teleport.edm_unet", quality=..., ...)`` and ``ctx.network(gate)``; pass
``[gate]`` to every ``ClaimSpec.judge`` whose claim uses that network. results.json lists every
registered gate under ``"networks"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from . import thresholds as T


@dataclass(frozen=True)
class GateResult:
    """A trained network's gate numbers and whether it passes (``reason`` says why not)."""

    name: str
    quality_metric: str  # "FID" (feature net) or "SW" (sliced W2)
    quality: float
    quality_floor: float
    nn_median: float
    nn_median_heldout: float
    loss: Optional[float]
    loss_optimum: Optional[float]
    loss_gaussian: Optional[float]
    passes: bool
    reason: str

    @property
    def gap_closed(self) -> Optional[float]:
        """(L_gauss - L_net) / (L_gauss - L_opt): 0 = no better than the Gaussian, 1 = the optimum."""
        if self.loss is None or self.loss_optimum is None or self.loss_gaussian is None:
            return None
        den = self.loss_gaussian - self.loss_optimum
        return (self.loss_gaussian - self.loss) / den if den > 0 else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gap_closed"] = self.gap_closed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _finite(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(float(v))


def judge_network(
    name: str,
    *,
    quality_metric: str,
    quality: float,
    quality_floor: float,
    nn_median: float,
    nn_median_heldout: float,
    loss: Optional[float] = None,
    loss_optimum: Optional[float] = None,
    loss_gaussian: Optional[float] = None,
) -> GateResult:
    """Apply the gate (module docstring) to one network's measured numbers."""
    if quality_metric not in ("FID", "SW"):
        raise ValueError(f"quality_metric must be 'FID' or 'SW', got {quality_metric!r}")
    factor = T.GATE_FID if quality_metric == "FID" else T.GATE_SW
    fails = []
    if not (_finite(quality) and _finite(quality_floor)) or quality > factor * quality_floor:
        fails.append(f"{quality_metric} {quality:.4g} > {factor:g} x floor {quality_floor:.4g}")
    if not (_finite(nn_median) and _finite(nn_median_heldout)) or nn_median > T.GATE_NN * nn_median_heldout:
        fails.append(f"median NN distance {nn_median:.4g} > {T.GATE_NN:g} x held-out's {nn_median_heldout:.4g}")
    g = GateResult(name, quality_metric, float(quality), float(quality_floor), float(nn_median),
                   float(nn_median_heldout), None if loss is None else float(loss),
                   None if loss_optimum is None else float(loss_optimum),
                   None if loss_gaussian is None else float(loss_gaussian), True, "")
    gap = g.gap_closed
    if loss is not None and (gap is None or not math.isfinite(gap) or gap < T.GATE_GAP):
        fails.append(f"loss {loss:.4g} closes {gap if gap is None else round(gap, 3)} of the gap from the Gaussian "
                     f"denoiser's {loss_gaussian:.4g} to the optimum's {loss_optimum:.4g} (< {T.GATE_GAP:g})")
    return GateResult(**{**asdict(g), "passes": not fails, "reason": "; ".join(fails) if fails else "passes"})


GATE_TEXT = (f"FID on the feature net <= {T.GATE_FID:g} x the train-vs-held-out floor (2-D points: sliced W2 <= "
             f"{T.GATE_SW:g} x an independent data draw's), median nearest-neighbour distance to the training set <= "
             f"{T.GATE_NN:g} x held-out data's, and, where the exact optimum exists, a training loss that closes >= "
             f"{T.GATE_GAP:g} of the gap from the Gaussian denoiser's loss to the optimum's")
