"""Variance-preserving networks (DDPM, iDDPM, diffusers, score_sde VP) as VE denoisers (DESIGN.md §8).

A VP model sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``. In scoredyn's VE convention
``x = x_vp / sqrt(abar)`` and ``sigma = sqrt((1 - abar) / abar)``, so the network is called on
``x / sqrt(1 + sigma^2)`` at the timestep whose noise level is ``sigma``, and its epsilon, v or x0
prediction is turned into ``D(x, sigma)`` (:func:`~scoredyn.external.base.vp_denoised`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import torch
from torch import Tensor

from .._checks import check_finite, check_positive
from .base import ExternalDenoiser, check_network, check_prediction, first_channels, network_output, vp_denoised

TIMESTEP_MAPS = ("linear", "log", "nearest")


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """``numpy.interp``: piecewise-linear interpolation of ``(xp, fp)`` at ``x`` (``xp`` ascending), clamped at the ends."""
    hi = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    lo = hi - 1
    w = ((x - xp[lo]) / (xp[hi] - xp[lo])).clamp(0, 1)
    return fp[lo] + w * (fp[hi] - fp[lo])


class VPDenoiser(ExternalDenoiser):
    """A discrete-timestep VP network ``model(x_vp, t)`` (epsilon, v or x0 prediction) as a VE denoiser.

    ``alphas_cumprod`` ``(T,)`` is the model's ``abar_t`` for ``t = 0 .. T-1`` (decreasing); its noise
    levels ``sigma_t = sqrt((1 - abar_t) / abar_t)`` form the ascending table :attr:`sigmas`. A noise
    level ``sigma`` is sent to the (fractional) timestep whose sigma it is: ``"linear"`` interpolates
    sigma linearly in t (diffusers' ``EulerDiscreteScheduler``), ``"log"`` interpolates log sigma
    (k-diffusion's ``DiscreteSchedule``), ``"nearest"`` takes the nearest table timestep in log sigma.
    Outside the table the timestep is clamped to ``[0, T-1]``. ``quantize=True`` snaps sigma itself to
    the nearest table value first (k-diffusion's ``quantize``; here the input scaling and the output
    combination use the snapped sigma too, so ``D`` is the network's denoiser at a training level).
    ``model(x, t)`` may return a tensor or an object with ``.sample`` (diffusers); a network with
    twice the input channels (learned variance, iDDPM) keeps its first half.
    """

    def __init__(
        self, model: Callable[..., Any], alphas_cumprod: Any, *, prediction: str = "epsilon",
        timestep_map: str = "linear", quantize: bool = False,
    ) -> None:
        super().__init__()
        check_network(model, "model(x, t)")
        abar = check_finite("alphas_cumprod", torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).reshape(-1))
        if abar.numel() < 2:
            raise ValueError(f"alphas_cumprod has {abar.numel()} value(s); expected the model's table of at least 2 timesteps")
        if bool(((abar <= 0) | (abar >= 1)).any()):
            raise ValueError("alphas_cumprod must lie in (0, 1) (a timestep with abar = 1 has no noise); got "
                             f"min {float(abar.min()):.6g}, max {float(abar.max()):.6g}")
        if not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in t (noise grows with the timestep)")
        if timestep_map not in TIMESTEP_MAPS:
            raise ValueError(f"timestep_map must be one of {TIMESTEP_MAPS}, got {timestep_map!r}")
        self.model = model
        self.prediction = check_prediction(prediction)
        self.timestep_map = timestep_map
        self.quantize = bool(quantize)
        self.alphas_cumprod = abar
        self.sigmas = ((1 - abar) / abar).sqrt()
        """The model's own noise levels, ascending (float64, CPU)."""
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self._tables: Dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``(sigmas, log sigmas, t)`` in float64 on ``device`` (float32 where float64 is unsupported)."""
        if device not in self._tables:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            s = self.sigmas.to(device, dtype)
            self._tables[device] = (s, s.log(), torch.arange(s.numel(), device=device, dtype=dtype))
        return self._tables[device]

    def snap(self, sigma: Tensor) -> Tensor:
        """The table value nearest to each ``sigma`` (in log sigma)."""
        table, log_table, _ = self._table(sigma.device)
        i = (sigma.to(table.dtype).log()[:, None] - log_table[None]).abs().argmin(dim=1)
        return table[i].to(sigma.dtype)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep ``(B,)`` whose noise level is ``sigma``, by :attr:`timestep_map`."""
        table, log_table, t = self._table(sigma.device)
        s = sigma.to(table.dtype)
        if self.timestep_map == "linear":
            return _interp(s, table, t)
        if self.timestep_map == "log":
            return _interp(s.log(), log_table, t)
        return (s.log()[:, None] - log_table[None]).abs().argmin(dim=1).to(table.dtype)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.quantize:
            sigma = self.snap(sigma)
        t = self.timestep(sigma).to(x.dtype)
        out = first_channels(network_output(self.model(x * torch.rsqrt(1 + sigma * sigma).reshape(-1, *[1] * (x.dim() - 1)), t)), x)
        return vp_denoised(x, sigma, out, self.prediction)

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction!r}, timestep_map={self.timestep_map!r}, quantize={self.quantize}, "
                f"T={self.sigmas.numel()}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}")


class ContinuousVPDenoiser(ExternalDenoiser):
    """A continuous-time VP network ``model(x_vp, label_scale * t)`` (score_sde's DDPM++/NCSN++ VP,
    EDM's ``VPPrecond``) as a VE denoiser.

    The linear VP SDE (Song et al. 2021, Eq. 11, ``beta(t) = beta_min + t (beta_max - beta_min)``) has
    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` with ``beta_d = beta_max - beta_min``,
    inverted as ``t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``
    (Karras et al. 2022, Table 1, VP column); the network's label is ``label_scale * t``
    (``999`` for score_sde and EDM). ``sigma_min = sigma(epsilon_t)``, ``sigma_max = sigma(1)``.
    """

    def __init__(
        self, model: Callable[..., Any], *, beta_min: float = 0.1, beta_max: float = 20.0, label_scale: float = 999.0,
        epsilon_t: float = 1e-5, prediction: str = "epsilon",
    ) -> None:
        super().__init__()
        self.model = check_network(model, "model(x, label)")
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if not self.beta_max > self.beta_min:
            raise ValueError(f"beta_max ({beta_max}) must exceed beta_min ({beta_min})")
        self.label_scale = check_positive("label_scale", label_scale)
        self.epsilon_t = check_positive("epsilon_t", epsilon_t)
        if self.epsilon_t >= 1:
            raise ValueError(f"epsilon_t must be in (0, 1), got {epsilon_t}")
        self.prediction = check_prediction(prediction)
        self.sigma_min = self.sigma_of(self.epsilon_t)
        self.sigma_max = self.sigma_of(1.0)

    def sigma_of(self, t: float) -> float:
        """``sigma(t)`` of the linear VP SDE."""
        bd = self.beta_max - self.beta_min
        return math.sqrt(math.expm1(0.5 * bd * t * t + self.beta_min * t))

    def timestep(self, sigma: Tensor) -> Tensor:
        """``t(sigma)`` in ``[0, inf)``, computed in float64."""
        bd = self.beta_max - self.beta_min
        s = sigma.to(torch.float32 if sigma.device.type == "mps" else torch.float64)
        return ((self.beta_min**2 + 2 * bd * torch.log1p(s * s)).sqrt() - self.beta_min) / bd

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        label = (self.label_scale * self.timestep(sigma)).to(x.dtype)
        out = first_channels(network_output(self.model(x * torch.rsqrt(1 + sigma * sigma).reshape(-1, *[1] * (x.dim() - 1)), label)), x)
        return vp_denoised(x, sigma, out, self.prediction)

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction!r}, beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"label_scale={self.label_scale}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}")
