"""Trajectories of ``dx/dtau = f(x)``, the Lyapunov function along them, and basins of attraction.

For a multiplicative model the probability-flow ODE is ``dx/dtau = f(x)`` with
``tau = sigma_max - sigma`` (DESIGN.md §4; Kim 2026, §4.1.2); for Kim's optimum ``f* = grad L / M``
the function ``L`` never decreases along it (DESIGN.md §3; Kim 2026, Thm 4.3).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .._checks import check_count, check_finite, check_positive, check_state
from .._integrate import integrate
from ..metrics.knn import knn_checked
from ._common import leader_clusters
from .jacobian import Field, flatten_field


def trajectories(field: Field, x0: Tensor, tau: float, n_steps: int = 100, record: int = 1) -> Tensor:
    """Fixed-step RK4 of ``dx/dtau = field(x)`` from ``x0`` over ``[0, tau]``: states ``(T, B, *shape)``.

    ``h = tau / n_steps`` (``tau < 0`` integrates backwards). States are kept at steps
    ``0, record, 2 record, ...`` and at the last step, so ``T = ceil(n_steps / record) + 1`` (the
    ``record`` of :func:`scoredyn.sample.autonomous`, which shares this integrator). Stiff
    fields (rates ``~ 1/sigma_min`` near training points, DESIGN.md §4) need ``|h| * rate < 2.7``.
    Raises ``ValueError`` if the trajectory becomes NaN/Inf (the step was too large).
    """
    x0 = check_state("x0", x0)
    tau = float(tau)
    if not math.isfinite(tau) or tau == 0:
        raise ValueError(f"tau must be finite and non-zero, got {tau}")
    try:
        n_steps, record = check_count("n_steps", n_steps), check_count("record", record)
    except ValueError as e:
        raise ValueError(f"n_steps and record must be >= 1: {e}") from None
    b = x0.shape[0]
    f = flatten_field(field, tuple(x0.shape[1:]))
    times = [tau * k / n_steps for k in range(n_steps)] + [tau]
    with torch.no_grad():
        sol = integrate(f, x0.detach().reshape(b, -1), times, method="rk4", record=record, uniform=True, name="trajectories")
    assert sol.states is not None
    return sol.states.reshape(sol.states.shape[0], *x0.shape)


def lyapunov_trace(model: Any, traj: Tensor) -> Tensor:
    """``log L(x)`` at every state of ``traj`` ``(T, B, *shape)``: ``(T, B)``.

    ``model`` is a ``NoiseAgnostic`` multiplicative model (it provides ``log_lyapunov(x) -> (B,)``,
    ``L = int p_sigma dsigma``, DESIGN.md §3); along its own flow ``dx/dtau = f*`` the trace is
    non-decreasing (Kim 2026, Thm 4.3).
    """
    fn = getattr(model, "log_lyapunov", None)
    if not callable(fn):
        raise ValueError(
            f"model must provide log_lyapunov(x) (a NoiseAgnostic multiplicative model), got {type(model).__name__}"
        )
    if not isinstance(traj, Tensor) or traj.dim() < 3:
        shape = tuple(traj.shape) if isinstance(traj, Tensor) else type(traj).__name__
        raise ValueError(f"traj must be a tensor of shape (T, B, *state_shape), got {shape}")
    check_finite("traj", traj)
    with torch.no_grad():
        rows = [fn(traj[t]) for t in range(traj.shape[0])]
    out = torch.stack(rows)
    if out.shape != traj.shape[:2]:
        raise ValueError(f"model.log_lyapunov returned shape {tuple(rows[0].shape)}; expected ({traj.shape[1]},)")
    return check_finite("log L along the trajectory", out)


def basins(
    field: Field,
    points: Tensor,
    *,
    tau: float,
    n_steps: int = 200,
    attractors: Optional[Tensor] = None,
    tol: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Which attractor each start point reaches: ``(labels (B,), attractors (K, *shape))``.

    Every point is integrated with :func:`trajectories` to ``tau``. With ``attractors`` given, a
    label is the index of the nearest attractor, or ``-1`` when the endpoint is farther than
    ``tol`` from all of them. Otherwise the endpoints are clustered (leader clustering with
    radius ``tol``, in start order) and each cluster's mean endpoint is returned as its attractor.
    For a 2-D picture pass a grid of points and reshape the labels.
    """
    points = check_state("points", points)
    tol = check_positive("tol", tol)
    if attractors is not None and attractors.dim() >= 1 and attractors.shape[0] == 0:
        return torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device), attractors
    end = trajectories(field, points, tau, n_steps=n_steps, record=n_steps)[-1]
    b = end.shape[0]
    zf = end.reshape(b, -1)
    if attractors is not None:
        attractors = check_state("attractors", attractors)
        if attractors.shape[1:] != points.shape[1:]:
            raise ValueError(
                f"attractors have shape {tuple(attractors.shape)}; expected (K, {', '.join(map(str, points.shape[1:]))})"
            )
        att = attractors.to(zf).reshape(attractors.shape[0], -1)
        near, nearest = knn_checked(zf, att, 1)  # exact, chunked, cancellation-safe (metrics.knn)
        near, labels = near[:, 0], nearest[:, 0]
        return torch.where(near <= tol, labels, torch.full_like(labels, -1)), attractors
    labels, leaders = leader_clusters(zf, tol)
    k = leaders.numel()
    sums = zf.new_zeros(k, zf.shape[1]).index_add_(0, labels, zf)
    counts = torch.bincount(labels, minlength=k).to(zf.dtype)
    return labels, (sums / counts[:, None]).reshape(k, *points.shape[1:])
