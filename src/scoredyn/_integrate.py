"""The one integrator of the autonomous ODE ``dx/dtau = f(x)`` (DESIGN.md §4; Kim 2026, §4.1.2) and
the :class:`Solution` every ODE solve returns.

Fixed steps are Euler or classical 4th-order Runge-Kutta on a given time grid; adaptive steps are
Dormand-Prince 5(4) (torchdiffeq ``dopri5``), whose error norm is the RMS over the whole batch, so
adaptive step sizes (and results, to within the tolerance) depend on which samples share a batch.
``record = k > 0`` keeps the states at grid indices ``0, k, 2k, ...`` and the last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ._checks import check_count, check_positive, on_host
from ._result import Result

Field = Callable[[Tensor], Tensor]
METHODS = ("euler", "rk4", "dopri5")


@dataclass(frozen=True)
class Solution(Result):
    """An ODE solve: the end state ``x``, the field or denoiser evaluations ``nfe`` it took, and with
    ``record`` the kept ``states`` ``(T, *x.shape)`` at times ``taus`` ``(T,)`` (float64)."""

    x: Tensor
    nfe: int
    states: Optional[Tensor] = None
    taus: Optional[Tensor] = None

    def as_tuple(self) -> tuple[Tensor, int]:
        """``(x, nfe)``."""
        return self.x, self.nfe

    def __iter__(self) -> Any:
        # 0.1 returned (x, nfe): say how to read a Solution instead of Python's "not iterable"
        raise TypeError("a Solution is not a tuple (scoredyn 0.2): read sol.x and sol.nfe, or x, nfe = sol.as_tuple()")

    def __getitem__(self, index: object) -> Any:
        raise TypeError(f"a Solution cannot be indexed (sol[{index!r}]); read its fields sol.x, sol.nfe, sol.states, sol.taus")


def rk4_step(f: Field, z: Tensor, h: Union[float, Tensor], k1: Optional[Tensor] = None) -> Tensor:
    """One classical Runge-Kutta step of ``dz/dtau = f(z)`` (``h``: float or broadcastable tensor)."""
    k1 = f(z) if k1 is None else k1
    k2 = f(z + 0.5 * h * k1)
    k3 = f(z + 0.5 * h * k2)
    k4 = f(z + h * k3)
    return z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def odeint_dopri5(func: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, rtol: float, atol: float) -> Tensor:
    """torchdiffeq dopri5 at the times ``t``, made to step exactly onto the last time instead of past it."""
    from torchdiffeq import odeint

    return odeint(func, x, t, rtol=rtol, atol=atol, method="dopri5", options=dict(step_t=t[-1:]))


def tolerances(rtol: Optional[float], atol: Optional[float], default: float = 1e-5) -> tuple[float, float]:
    """``(rtol, atol)``, each positive and finite (``None``: ``default``)."""
    return check_positive("rtol", default if rtol is None else rtol), check_positive("atol", default if atol is None else atol)


def _kept(n_times: int, record: int) -> list[int]:
    return sorted(set(range(0, n_times, record)) | {n_times - 1})


def integrate(
    f: Field, x: Tensor, times: Sequence[float], *, method: str = "rk4", record: int = 0,
    rtol: Optional[float] = None, atol: Optional[float] = None, uniform: bool = False,
    callback: Optional[Callable[[dict], Any]] = None, progress: bool = False, name: str = "autonomous",
) -> Solution:
    """Integrate ``dx/dtau = f(x)`` through the strictly monotone ``times`` (the first is the start).

    ``method``: ``"euler"``, ``"rk4"`` (one step per interval of ``times``) or ``"dopri5"``
    (adaptive with ``rtol``/``atol``, default 1e-5, reporting the state at every time).
    ``uniform``: every fixed step is ``h = (times[-1] - times[0]) / (len(times) - 1)`` exactly
    (``times`` must then be that uniform grid) rather than the difference of consecutive times.
    ``callback`` gets ``dict(i, tau, x)`` after each fixed step. Raises ``ValueError`` naming the
    step and the sample when the state becomes NaN/Inf (the step was too large for the field's rates).
    """
    if method not in METHODS:
        raise ValueError(f"method must be 'euler', 'rk4' or 'dopri5', got {method!r}")
    record = check_count("record", record, least=0)
    times = [float(t) for t in times]
    nfe = 0

    def field(y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return f(y)

    if method == "dopri5":
        r, a = tolerances(rtol, atol)
        if len(times) == 1:
            states = x[None]
        else:
            states = odeint_dopri5(lambda _t, y: field(y), x, torch.tensor(times, dtype=torch.float64, device=x.device), r, a)
        bad = ~torch.isfinite(states[-1].reshape(x.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"{name}: non-finite (NaN/Inf) result integrating to tau = {times[-1]:.6g} (sample {int(bad.nonzero()[0])})")
        keep = _kept(len(times), record) if record else []
        return _solution(states[-1], nfe, [states[i] for i in keep], [times[i] for i in keep])
    if rtol is not None or atol is not None:
        raise ValueError(f"rtol/atol apply to method='dopri5', not to the fixed-step method {method!r}")
    from .sample.common import progress_range

    keep = set(_kept(len(times), record)) if record else set()
    states = [x] if 0 in keep else []
    host = on_host(x)
    first_bad = torch.full((), -1, dtype=torch.long, device=x.device)  # on accelerators: found without a sync
    h_uniform = (times[-1] - times[0]) / (len(times) - 1) if uniform and len(times) > 1 else None
    for i in progress_range(len(times) - 1, progress, name):
        h = times[i + 1] - times[i] if h_uniform is None else h_uniform
        x = rk4_step(field, x, h) if method == "rk4" else x + field(x) * h
        if host:
            _check_step(name, x, i, times)
        else:
            bad = ~torch.isfinite(x).all()
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
        if callback is not None:
            callback(dict(i=i, tau=times[i + 1], x=x))
        if i + 1 in keep:
            states.append(x)
    if not host and int(first_bad) >= 0:
        raise ValueError(f"{name}: non-finite values (NaN/Inf) at step {int(first_bad)}; the step was too large")
    return _solution(x, nfe, states, [times[i] for i in sorted(keep)])


def _check_step(name: str, x: Tensor, i: int, times: list[float]) -> None:
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: sample {int(bad.nonzero()[0])} became NaN/Inf at step {i} (tau {times[i]:.6g} -> {times[i + 1]:.6g}); "
            f"expected a step small enough for the field's rates (increase n_steps)"
        )


def _solution(x: Tensor, nfe: int, states: list[Tensor], taus: list[float]) -> Solution:
    if not states:
        return Solution(x, nfe)
    return Solution(x, nfe, torch.stack(states), torch.tensor(taus, dtype=torch.float64))
