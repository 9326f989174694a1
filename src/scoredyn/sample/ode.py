"""Adaptive probability-flow ODE, the autonomous ODE ``dx/dtau = f(x)``, and Zhou et al.'s sampler
for noise-unconditional models.

Adaptive solves use Dormand-Prince 5(4) (``dopri5``) from torchdiffeq. Its error norm is the RMS
over the whole batch, so adaptive step sizes (and results, to within the tolerance) depend on
which samples share a batch; fixed-step methods do not.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .._checks import Denoiser, bcast, check_choice, check_count, check_data, check_positive, check_range, check_state
from .._integrate import METHODS, Solution, integrate, odeint_dopri5, tolerances
from .common import Callback, GridLike, Run, SamplerDivergence, Seeds

Field = Callable[[Tensor], Tensor]


def ode_adaptive(
    denoiser: Denoiser, x: Tensor, *, sigma_min: float, sigma_max: float,
    rtol: float = 1e-5, atol: float = 1e-5,
) -> Solution:
    """Probability-flow ODE ``dx/dsigma = (x - D(x, sigma))/sigma`` from ``sigma_max`` down to
    ``sigma_min > 0`` with Dormand-Prince (torchdiffeq ``dopri5``): a :class:`Solution` ``(x, nfe)``.

    ``nfe`` counts every denoiser evaluation, including the initial step-size probe and the
    stages of rejected steps. Time is float64 (EDM keeps its time steps in float64).
    """
    x = check_state("x", x)
    lo, hi = check_range(sigma_min, sigma_max, allow_equal=True, allow_zero=True)
    if lo == 0:
        raise ValueError(
            "sigma_min must be > 0 for ode_adaptive (the ODE is singular at 0); integrate to a small sigma "
            "and denoise, or use the registry sampler SAMPLERS['ode_adaptive'] on a grid ending in 0"
        )
    rtol, atol = tolerances(rtol, atol)
    if lo == hi:
        return Solution(x, 0)
    nfe = 0
    batch = x.shape[0]

    def velocity(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        # Steps end exactly at sigma_min; only dopri5's initial step-size probe can look past it.
        s = t.clamp(min=lo).to(y.dtype)
        v = (y - denoiser(y, s.expand(batch))) / s
        if not bool(torch.isfinite(v).all()):  # adaptive stepping syncs every step anyway
            raise SamplerDivergence(
                f"ode_adaptive: non-finite derivative at sigma {float(t):.6g} (integrating {hi:.6g} -> {lo:.6g}); "
                f"the denoiser returned NaN/Inf there"
            )
        return v

    t = torch.tensor([hi, lo], dtype=torch.float64, device=x.device)
    out = odeint_dopri5(velocity, x, t, rtol, atol)[-1]
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"ode_adaptive: non-finite result integrating from sigma {hi:.6g} to {lo:.6g}")
    return Solution(out, nfe)


def ode_adaptive_sampler(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
) -> Tensor:
    """Adaptive Dormand-Prince on the probability-flow ODE from ``sigmas[0]`` to the last positive level,
    then ``D`` when the grid ends in 0 (the registry form of :func:`ode_adaptive`)."""
    run = Run("ode_adaptive", denoiser, x, sigmas, seeds, callback, progress, invertible=True)
    sig = run.sigmas
    if run.ascending:  # inversion, data -> noise
        from .invert import ode_ascending

        return run.finish(ode_ascending(denoiser, x, sig[0], sig[-1], rtol=rtol, atol=atol))
    last = sig[-2] if sig[-1] == 0 else sig[-1]
    x = ode_adaptive(denoiser, x, sigma_min=last, sigma_max=sig[0], rtol=rtol, atol=atol).x
    if sig[-1] == 0:
        d = run.denoise(x, last)
        run.emit(run.n_steps - 1, x, d)
        x = d
        run.guard(run.n_steps - 1, x, last, 0.0)
    return run.finish(x)


# --------------------------------------------------------------------------- autonomous ODE


def as_field(field: Any) -> Field:
    """``field.field`` when the model has one (multiplicative/unconditional models), else ``field`` itself,
    which must take one argument (a denoiser ``D(x, sigma)`` without ``.field`` is refused)."""
    f = getattr(field, "field", field)
    if not callable(f):
        raise ValueError(f"field must be callable as f(x) or have a .field(x) method, got {type(field).__name__}")
    try:
        params = inspect.signature(f.forward if isinstance(f, torch.nn.Module) else f).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return f
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise ValueError(
            f"expected a sigma-free field f(x) or a model with .field(x); {type(field).__name__} takes "
            f"{len(required)} arguments (a denoiser D(x, sigma)?): only multiplicative/unconditional models have a field"
        )
    return f


def autonomous(
    field: Any, x: Tensor, tau: Union[float, Tensor], *, n_steps: Optional[int] = None,
    rtol: Optional[float] = None, atol: Optional[float] = None, method: Optional[str] = None,
    record: int = 0, callback: Optional[Callback] = None, progress: bool = False,
) -> Solution:
    """Integrate the autonomous ODE ``dx/dtau = f(x)`` (Kim 2026, §4.1.2) from 0 to ``tau``: a :class:`Solution`.

    ``field`` is ``f`` or a model with ``.field`` (``NoiseAgnostic``, multiplicative/unconditional
    nets). ``tau`` is a float, or a 1-D increasing tensor of times (the first is the start).

    * ``method="euler"`` or ``"rk4"`` (classical 4th-order Runge-Kutta): fixed steps, ``n_steps``
      uniform steps on ``[0, tau]`` or the given time grid.
    * ``method="dopri5"``: adaptive Dormand-Prince with ``rtol``/``atol`` (default 1e-5).

    Default method: ``"euler"`` if ``n_steps`` is given or ``tau`` is a grid and no tolerance is,
    else ``"dopri5"``. ``record = k > 0`` keeps the states at every ``k``-th time of the grid and the
    last (``Solution.states``, ``.taus``); ``callback`` gets ``i, tau, x`` after each fixed step.
    """
    f = as_field(field)
    x = check_state("x", x)
    times = _time_grid(tau, n_steps)
    if method is not None:
        check_choice("method", method, METHODS)
    if method is None:
        fixed = n_steps is not None or (isinstance(tau, Tensor) and rtol is None and atol is None)
        method = "euler" if fixed else "dopri5"
    if method == "dopri5" and n_steps is not None:
        raise ValueError("n_steps is for the fixed-step methods; dopri5 chooses its own steps (give rtol/atol)")
    if method != "dopri5" and len(times) == 2 and n_steps is None and not isinstance(tau, Tensor):
        raise ValueError("fixed-step methods need n_steps (or a tensor grid of times for tau)")
    return integrate(f, x, times, method=method, record=record, rtol=rtol, atol=atol,
                     callback=callback, progress=progress, name="autonomous")


def _time_grid(tau: Union[float, Tensor], n_steps: Optional[int]) -> list[float]:
    if isinstance(tau, Tensor) and tau.dim() == 1:
        if n_steps is not None:
            raise ValueError("give either n_steps with a float tau, or a tensor grid of times, not both")
        times = [float(t) for t in tau.detach().to("cpu", torch.float64).tolist()]
        if len(times) < 2:
            raise ValueError(f"tau grid has {len(times)} time(s); expected at least 2 increasing times")
        if not all(math.isfinite(t) for t in times) or any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError("tau grid must be finite and strictly increasing")
        return times
    total = check_positive("tau", float(tau), allow_zero=True)
    if total == 0:
        return [0.0]
    if n_steps is None:
        return [0.0, total]
    n = check_count("n_steps", n_steps)
    return [total * k / n for k in range(n)] + [total]


# --------------------------------------------------------------------------- noise-unconditional models


def unconditional_ode(
    model: Any, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False, data: Optional[Tensor] = None,
) -> Tensor:
    """Probability-flow Euler for a noise-unconditional score ``f(x)`` with steps sized by the model's own
    noise estimate, after Zhou, Zhang & Wright 2026 (arXiv:2601.19285), Noise Unconditioning.

    ``model`` is the score field ``f`` (a callable ``f(x)``) or a model with ``.field``. Plain
    Euler on ``dx/dsigma = -sigma f(x)`` steps by ``(sigma_i - sigma_(i+1)) sigma_i f(x)``; once the
    state is cleaner than the schedule says (the model acts at a smaller ``sigma_hat``) that step
    overshoots by ``sigma_i / sigma_hat``. Here each sample estimates its own level,
    ``sigma_hat = sqrt(d) / |f(x)|`` (the score norm of isotropic noise, ``|s| ~ sqrt(d)/sigma``),
    capped at ``sigma_i``, or ``min_j |x - x_j| / sqrt(d)`` when the training ``data`` are given,
    capped only at the grid's ``sigma_max`` (so a state noisier than the schedule catches up), and takes the exact Euler/DDIM step from ``sigma_hat`` to ``sigma_(i+1)``:
    ``x <- x + (1 - r) sigma_hat^2 f(x)``, ``r = min(sigma_(i+1) / sigma_hat, 1)``; to 0 this is
    the denoised estimate ``x + sigma_hat^2 f(x)``. One field evaluation per step.

    Known limitation of the score-norm estimate: its cap at ``sigma_i`` fixes overshoot (a state cleaner
    than the schedule) but cannot fix lag (a state noisier than the schedule, ``sigma_hat > sigma_i``), which is what the exact
    unconditional optimum of a high-dimensional set shows: along its ODE ``r^2 - (d - 2) sigma^2`` stays
    roughly constant near a training point, so starts with ``r_0^2 > (d - 2) sigma_max^2`` stall at a
    distance of order ``sigma_max`` (measured on digits, d = 64: median nearest-neighbour distance 25
    vs 2.6 for held-out images). Raising the cap lets such states catch up (copy fraction 1, as for
    the empirical score) but lets a state sitting on a training point, where ``|f|`` vanishes,
    overshoot by ``d sigma_min^2 / r``. The nearest-neighbour estimate has no such pathology (it
    vanishes at a training point), so with ``data`` the cap is ``sigma_max`` and lag is corrected.
    """
    from ..metrics.knn import knn_checked

    f = as_field(model)
    run = Run("unconditional_ode", lambda y, s: y, x, sigmas, seeds, callback, progress)
    if data is not None:
        data = check_data("data", data)
        if tuple(data.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"data has point shape {tuple(data.shape[1:])}; expected {tuple(x.shape[1:])} like x")
        data = data.to(device=x.device, dtype=torch.float64)  # once, not at every step
    sig = run.sigmas
    s_max = sig[0]
    root_d = math.sqrt(x[0].numel())
    for i in run.steps():
        s, s_next = sig[i], sig[i + 1]
        score = f(x)
        if data is None:
            norm = score.reshape(score.shape[0], -1).norm(dim=1)
            s_hat = root_d / norm
        else:
            s_hat = knn_checked(x, data, 1)[0][:, 0].to(x.dtype) / root_d
        s_hat = s_hat.clamp(max=s if data is None else s_max)
        r = (s_next / s_hat).clamp(max=1.0)
        denoised = x + score * bcast(s_hat * s_hat, x)
        run.emit(i, x, denoised, sigma_hat=s_hat)
        x = x + score * bcast((1.0 - r) * s_hat * s_hat, x)
        run.guard(i, x, s, s_next)
    return run.finish(x)
