"""Samplers in sigma-space on a denoiser (DESIGN.md §4): fixed-grid ODE/SDE/Langevin samplers, the
adaptive probability-flow ODE, the autonomous ODE, analytical teleportation and NCSNv2's schedule.

Every sampler in :data:`SAMPLERS` has the signature
``fn(denoiser, x, sigmas, *, seeds=None, callback=None, progress=False, **options) -> Tensor`` and
takes any strictly descending grid that may end in 0; :data:`FIELD_SAMPLERS` take a score field instead.
"""

from typing import Callable, Dict

from torch import Tensor

from .common import CountNFE, Run, SamplerDivergence, check_seeds, grid_values
from .kdiffusion import (
    ddim,
    dpm_2,
    dpm_2_ancestral,
    dpmpp_2m_sde,
    dpmpp_2s_ancestral,
    dpmpp_3m_sde,
    dpmpp_sde,
    euler_ancestral,
    lms,
)
from .grids import (
    max_pairwise_distance,
    ncsn_gamma,
    ncsn_overlap,
    ncsn_schedule,
    ncsn_step_lr,
    ncsn_variance_ratio,
    sigmas_geometric,
    sigmas_karras,
    sigma_grid,
    sigmas_loglinear,
)
from .invert import INVERTIBLE, invert
from .noise import noise
from .._integrate import Solution
from .pc import pc
from .ode import autonomous, ode_adaptive, ode_adaptive_sampler, unconditional_ode
from .solvers import annealed_langevin, dpmpp_2m, euler, euler_maruyama, heun, unipc
from .teleport import teleport, with_teleport

SAMPLERS: Dict[str, Callable[..., Tensor]] = {
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "unipc": unipc,
    "euler_maruyama": euler_maruyama,
    "annealed_langevin": annealed_langevin,
    "pc": pc,
    "ode_adaptive": ode_adaptive_sampler,
    # k-diffusion's samplers and DDIM (sample/kdiffusion.py)
    **{f.__name__: f for f in (euler_ancestral, dpm_2, dpm_2_ancestral, lms, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, ddim)},
}
"""Name -> sampler ``fn(denoiser, x, sigmas, ...)`` on any descending grid that may end in 0 (used by
``scoredyn sample --sampler NAME``)."""

FIELD_SAMPLERS: Dict[str, Callable[..., Tensor]] = {
    "unconditional_ode": unconditional_ode,
}
"""Name -> sampler ``fn(field, x, sigmas, ...)`` of a noise-unconditional score field ``f(x)`` (or a model
with ``.field``): these take no denoiser, so they live outside :data:`SAMPLERS`."""

__all__ = [
    "FIELD_SAMPLERS",
    "INVERTIBLE",
    "invert",
    "lms",
    "euler_ancestral",
    "dpmpp_sde",
    "dpmpp_3m_sde",
    "dpmpp_2s_ancestral",
    "dpmpp_2m_sde",
    "dpm_2_ancestral",
    "dpm_2",
    "ddim",
    "SAMPLERS",
    "CountNFE",
    "Run",
    "SamplerDivergence",
    "Solution",
    "annealed_langevin",
    "autonomous",
    "check_seeds",
    "dpmpp_2m",
    "euler",
    "euler_maruyama",
    "grid_values",
    "heun",
    "max_pairwise_distance",
    "ncsn_gamma",
    "ncsn_overlap",
    "ncsn_schedule",
    "ncsn_step_lr",
    "ncsn_variance_ratio",
    "noise",
    "pc",
    "ode_adaptive",
    "ode_adaptive_sampler",
    "sigma_grid",
    "sigmas_geometric",
    "sigmas_karras",
    "sigmas_loglinear",
    "teleport",
    "unconditional_ode",
    "unipc",
    "with_teleport",
]
