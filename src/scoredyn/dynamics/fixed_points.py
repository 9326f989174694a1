"""Equilibria of ``dx/dtau = f(x)`` and their stability (DESIGN.md §4; Kim 2026, Thm 4.3-4.4).

Globalised Newton on ``f(x) = 0``, batched over start points:

* ``"newton"`` (``d <= dense_max``): the Jacobian from ``torch.func`` and a dense solve.
* ``"newton-krylov"`` (larger ``d``): Jacobian-free inexact Newton; GMRES on forward-mode
  Jacobian-vector products with Eisenstat-Walker forcing terms (Eisenstat & Walker 1996, choice 2).

Each step is damped by a backtracking line search on ``|f|^2`` (Armijo, ``c = 1e-4``, step halved
down to ``damping``). A point where no step decreases ``|f|^2`` (a non-root local minimum of
``|f|``, a singular Jacobian) instead follows the flow for ``flow_steps`` RK4 steps of size
``h = min(0.5 / |J|_2, 0.1 (1 + |x|_rms) / |f|_rms)`` and retries Newton; every Newton or flow
round counts as one of ``max_iter`` iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field, replace
from typing import Optional, Union

import torch
from torch import Tensor

from .._checks import check_choice, check_positive, check_state
from .._integrate import rk4_step
from ._common import leader_clusters, rms
from .jacobian import JVP, Field, FlatField, Jacobian, _nonfinite_rows, flatten_field
from .krylov import gmres, ritz_values, start_vector

KINDS = ("stable", "saddle", "unstable", "degenerate", "unconverged", "unknown")
"""Values of :attr:`FixedPoints.kind`."""

_ARMIJO = 1e-4


@dataclass
class FixedPoints:
    """Result of :func:`fixed_points`; row ``b`` comes from start point ``x0[b]``.

    * ``points`` ``(B, *shape)``; ``converged`` ``(B,)`` bool; ``residual`` ``(B,)`` rms of ``f``.
    * ``eigenvalues`` ``(B, k)`` complex: of the Jacobian at each point (``k = d`` for full
      spectra; for ``eigs=k`` the ``k - 1`` rightmost Ritz values and the leftmost, sorted by
      decreasing real part; ``k = 0`` for ``eigs="none"``).
    * ``stable`` ``(B,)`` bool: converged and every real part ``< -eig_tol * max|lambda|``.
    * ``kind``: per point one of :data:`KINDS` — hyperbolic points are ``"stable"`` (all real
      parts negative), ``"unstable"`` (all positive) or ``"saddle"``; ``"degenerate"`` when a real
      part is within ``eig_tol * max|lambda|`` of 0 (with Ritz values: among those computed); ``"unconverged"`` when Newton did not converge;
      ``"unknown"`` when no eigenvalues were computed.
    * ``method``: ``"newton"`` or ``"newton-krylov"``; ``n_iter`` ``(B,)`` iterations used, of
      which ``n_flow`` ``(B,)`` were flow fallbacks; ``counts`` ``(B,)``: after :meth:`unique`, how many start points each row stands for.
    """

    points: Tensor
    converged: Tensor
    residual: Tensor
    eigenvalues: Tensor
    stable: Tensor
    kind: list[str]
    method: str
    n_iter: Tensor
    n_flow: Tensor
    counts: Optional[Tensor] = dc_field(default=None)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def select(self, index: Tensor) -> "FixedPoints":
        """The rows ``index`` (a bool mask or an index tensor)."""
        index = torch.as_tensor(index, device=self.points.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        rows = index.tolist()
        return replace(
            self,
            points=self.points[index],
            converged=self.converged[index],
            residual=self.residual[index],
            eigenvalues=self.eigenvalues[index],
            stable=self.stable[index],
            kind=[self.kind[i] for i in rows],
            n_iter=self.n_iter[index],
            n_flow=self.n_flow[index],
            counts=None if self.counts is None else self.counts[index],
        )

    def unique(self, tol: float, *, converged_only: bool = True) -> "FixedPoints":
        """Merge points within Euclidean distance ``tol`` (flattened states); keep the lowest residual.

        Unconverged rows are dropped unless ``converged_only=False``. ``counts`` of the result says
        how many rows each kept point stands for.
        """
        tol = check_positive("tol", tol)
        keep = self.converged if converged_only else torch.ones_like(self.converged)
        idx = keep.nonzero().flatten()
        z = self.points[idx].reshape(idx.numel(), math.prod(self.points.shape[1:]))
        labels, leaders = leader_clusters(z, tol, priority=self.residual[idx])
        weight = torch.ones_like(labels) if self.counts is None else self.counts[idx]
        counts = torch.zeros(leaders.numel(), dtype=torch.long, device=labels.device).index_add_(0, labels, weight)
        out = self.select(idx[leaders])
        out.counts = counts
        return out

    def count(self) -> dict[str, int]:
        """Number of rows of each kind (after :meth:`unique`: distinct points of each kind)."""
        out: dict[str, int] = {}
        for kind in self.kind:
            out[kind] = out.get(kind, 0) + 1
        return {k: out[k] for k in KINDS if k in out}


class _Dense:
    """Newton directions from the full Jacobian (``torch.func``) and a batched dense solve."""

    method = "newton"

    def __init__(self, f: FlatField, chunk_size: Optional[int]) -> None:
        self.jacobian = Jacobian(f, chunk_size)
        self.jac = torch.empty(0)

    def direction(self, z: Tensor, fz: Tensor, eta: Tensor) -> Tensor:
        _, jac = self.jacobian(z)
        ok = torch.isfinite(jac).all(dim=2).all(dim=1)
        jac = torch.where(ok[:, None, None], jac, torch.zeros_like(jac))
        self.jac = torch.where(ok[:, None, None], jac, torch.full_like(jac, math.inf))
        dx, info = torch.linalg.solve_ex(jac, -fz)
        bad = (info != 0) | ~torch.isfinite(dx).all(dim=1)
        if bool(bad.any()):
            dx[bad] = -(torch.linalg.pinv(jac[bad]) @ fz[bad].unsqueeze(-1)).squeeze(-1)
        return dx

    def norm(self, rows: Tensor) -> Tensor:
        """Spectral norm of the last Jacobians (``inf`` where it was not finite)."""
        jac = self.jac[rows]
        finite = torch.isfinite(jac).all(dim=2).all(dim=1)
        safe = torch.where(finite[:, None, None], jac, torch.zeros_like(jac))
        return torch.where(finite, torch.linalg.matrix_norm(safe, ord=2), torch.full_like(finite, math.inf, dtype=jac.dtype))


class _Krylov:
    """Inexact Newton directions: GMRES on Jacobian-vector products, no ``d x d`` matrix."""

    method = "newton-krylov"

    def __init__(self, f: FlatField, krylov_dim: int, chunk_size: Optional[int]) -> None:
        self.jvp = JVP(f)
        self.m = krylov_dim
        self.chunk_size = chunk_size
        self.hess = torch.empty(0)

    def direction(self, z: Tensor, fz: Tensor, eta: Tensor) -> Tensor:
        dx, self.hess = gmres(lambda v: self.jvp(z, v), -fz, self.m, eta)
        return dx

    def norm(self, rows: Tensor) -> Tensor:
        """Largest singular value of the Arnoldi Hessenberg: a lower estimate of ``|J|_2``."""
        return torch.linalg.matrix_norm(self.hess[rows], ord=2)


def _line_search(f: FlatField, z: Tensor, fz: Tensor, dx: Tensor, damping: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backtracking on ``|f|^2``: returns new states, their ``f``, accepted and full-step masks."""
    phi0 = fz.pow(2).sum(dim=1)
    zn, fn = z.clone(), fz.clone()
    accepted = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    full = accepted.clone()
    pend = torch.arange(z.shape[0], device=z.device)
    alpha = 1.0
    while alpha >= damping:
        zt = z[pend] + alpha * dx[pend]
        ft = f(zt)
        phit = ft.pow(2).sum(dim=1)
        base = phi0[pend]
        ok = torch.isfinite(phit) & (phit <= (1.0 - 2.0 * _ARMIJO * alpha) * base) & (phit < base)
        sel = pend[ok]
        zn[sel], fn[sel] = zt[ok], ft[ok]
        accepted[sel] = True
        if alpha == 1.0:
            full[sel] = True
        pend = pend[~ok]
        if pend.numel() == 0:
            break
        alpha *= 0.5
    return zn, fn, accepted, full


def _follow_flow(f: FlatField, z: Tensor, fz: Tensor, jac_norm: Tensor, n_steps: int) -> tuple[Tensor, Tensor]:
    """``n_steps`` RK4 steps of ``dz/dtau = f``; a step that gives NaN/Inf is undone and halved."""
    cap = 0.1 * (1 + rms(z)) / rms(fz).clamp_min(torch.finfo(z.dtype).tiny)
    usable = torch.isfinite(jac_norm) & (jac_norm > 0)
    h = torch.where(usable, torch.minimum(0.5 / torch.where(usable, jac_norm, torch.ones_like(jac_norm)), cap), cap)[:, None]
    for _ in range(n_steps):
        step = rk4_step(f, z, h, k1=fz)
        ok = torch.isfinite(step).all(dim=1, keepdim=True)
        z = torch.where(ok, step, z)
        h = torch.where(ok, h, 0.5 * h)
        fz = f(z)
    return z, fz


def _eigenvalues(f: FlatField, z: Tensor, eigs: Union[str, int], krylov_dim: int, solver: Union[_Dense, _Krylov]) -> Tensor:
    b, d = z.shape
    cdtype = torch.complex128 if z.dtype == torch.float64 else torch.complex64
    if eigs == "none":
        return torch.empty(b, 0, dtype=cdtype, device=z.device)
    if eigs == "full":
        dense = solver.jacobian if isinstance(solver, _Dense) else Jacobian(f, solver.chunk_size)
        _, jac = dense(z)
        _nonfinite_rows("the Jacobian at the fixed points", jac)
        return torch.linalg.eigvals(jac)
    k = min(int(eigs), d)
    jvp = solver.jvp if isinstance(solver, _Krylov) else JVP(f)
    m = min(d, max(krylov_dim, 2 * k))
    return ritz_values(lambda v: jvp(z, v), start_vector(b, d, z), m, k)


def classify(eigenvalues: Tensor, converged: Tensor, eig_tol: float) -> tuple[Tensor, list[str]]:
    """``(stable (B,), kind list)`` from eigenvalues ``(B, k)`` (see :class:`FixedPoints`)."""
    b, k = eigenvalues.shape
    if k == 0:
        kinds = ["unknown" if c else "unconverged" for c in converged.tolist()]
        return torch.zeros_like(converged), kinds
    re = eigenvalues.real
    thr = eig_tol * eigenvalues.abs().amax(dim=1, keepdim=True)
    degenerate = (re.abs() <= thr).any(dim=1)
    neg = (re < 0).all(dim=1)
    pos = (re > 0).all(dim=1)
    stable = converged & ~degenerate & neg
    kinds = []
    for c, dg, n, p in zip(converged.tolist(), degenerate.tolist(), neg.tolist(), pos.tolist()):
        kinds.append("unconverged" if not c else "degenerate" if dg else "stable" if n else "unstable" if p else "saddle")
    return stable, kinds


def fixed_points(
    field: Field,
    x0: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    method: str = "auto",
    damping: float = 1e-4,
    krylov_dim: int = 50,
    flow_steps: int = 50,
    eigs: Union[str, int] = "auto",
    eig_tol: Optional[float] = None,
    dense_max: int = 256,
    chunk_size: Optional[int] = None,
) -> FixedPoints:
    """Equilibria ``f(x) = 0`` of a batched field, one Newton solve per start point ``x0[b]``.

    Args:
        field: ``(B, *shape) -> (B, *shape)``, acting on each sample independently.
        x0: start points ``(B, *shape)``, finite; the solve runs in their dtype and device.
        tol: converged when ``|f(x)|_rms <= tol``, or when a full Newton step had
            ``|dx|_rms <= tol (1 + |x|_rms)`` (the attainable accuracy when rounding floors ``|f|``,
            e.g. float32 near a stiff equilibrium).
        max_iter: Newton (or flow-fallback) rounds per point.
        method: ``"newton"`` (dense Jacobian), ``"newton-krylov"`` (matrix-free GMRES) or
            ``"auto"`` (dense for ``d <= dense_max``).
        damping: smallest line-search step fraction before falling back to the flow.
        krylov_dim: Arnoldi steps per GMRES solve (no restarts) and for Ritz values.
        flow_steps: RK4 steps per flow fallback.
        eigs: ``"full"`` (all ``d`` eigenvalues of the dense Jacobian: ``d`` VJPs and an
            ``O(d^3)`` eigensolve per point), an int ``k >= 2`` (the ``k - 1`` rightmost and the
            leftmost Ritz values from ``max(krylov_dim, 2k)`` Arnoldi steps on JVPs, no ``d x d``
            matrix: approximate, converging first at the extremes, which is what classification
            needs; a zero eigenvalue inside the spectrum can go unseen),
            ``"none"``, or ``"auto"`` (``"full"`` for ``d <= dense_max``, else ``8``).
        eig_tol: relative threshold for a zero real part (default ``sqrt(eps)`` of the dtype).
        chunk_size: VJPs (or JVPs) per batch when forming dense Jacobians (bounds memory for large ``d``).
    """
    x0 = check_state("x0", x0)
    tol = check_positive("tol", tol)
    if int(max_iter) < 1 or int(krylov_dim) < 1 or int(flow_steps) < 1:
        raise ValueError(
            f"max_iter, krylov_dim and flow_steps must be >= 1, got {max_iter}, {krylov_dim}, {flow_steps}"
        )
    if not 0 < float(damping) <= 1:
        raise ValueError(f"damping (the smallest line-search step) must be in (0, 1], got {damping}")
    shape = tuple(x0.shape[1:])
    b, d = x0.shape[0], math.prod(shape)
    method = check_choice("method", method, ("auto", "newton", "newton-krylov"))
    eigs = check_choice("eigs", eigs, ("auto", "full", "none"), count_least=2)
    if method == "auto":
        method = "newton" if d <= dense_max else "newton-krylov"
    if eigs == "auto":
        eigs = "full" if d <= dense_max else 8
    eig_tol = math.sqrt(torch.finfo(x0.dtype).eps) if eig_tol is None else check_positive("eig_tol", eig_tol)

    f = flatten_field(field, shape)
    solver: Union[_Dense, _Krylov] = _Dense(f, chunk_size) if method == "newton" else _Krylov(f, int(krylov_dim), chunk_size)
    eps = torch.finfo(x0.dtype).eps
    with torch.no_grad():
        z = x0.detach().reshape(b, d).clone()
        fz = f(z)
        _nonfinite_rows("field(x0)", fz)
        res = rms(fz)
        prev = res.clone()
        converged = res <= tol
        n_iter = torch.zeros(b, dtype=torch.long, device=z.device)
        n_flow = torch.zeros_like(n_iter)
        for _ in range(int(max_iter)):
            idx = (~converged).nonzero().flatten()
            if idx.numel() == 0:
                break
            za, fa, ra = z[idx], fz[idx], res[idx]
            # Eisenstat-Walker choice 2, capped at 0.1, and no more accuracy than tol needs.
            ew = 0.9 * (ra / prev[idx]).pow(2)
            eta = torch.maximum(ew.clamp(max=0.1), (0.5 * tol / ra).clamp(max=0.1)).clamp(min=100 * eps)
            dx = solver.direction(za, fa, eta)
            dx = torch.where(torch.isfinite(dx), dx, torch.zeros_like(dx))
            zn, fn, accepted, full = _line_search(f, za, fa, dx, float(damping))
            rej = (~accepted).nonzero().flatten()
            if rej.numel():
                zn[rej], fn[rej] = _follow_flow(f, za[rej], fa[rej], solver.norm(rej), int(flow_steps))
                n_flow[idx[rej]] += 1
            rn = rms(fn)
            conv = (rn <= tol) | (full & (rms(dx) <= tol * (1 + rms(zn))))
            prev[idx] = ra
            z[idx], fz[idx], res[idx] = zn, fn, rn
            converged[idx] = conv
            n_iter[idx] += 1
    ev = _eigenvalues(f, z, eigs, int(krylov_dim), solver)
    stable, kinds = classify(ev, converged, eig_tol)
    return FixedPoints(
        points=z.reshape(x0.shape),
        converged=converged,
        residual=res,
        eigenvalues=ev,
        stable=stable,
        kind=kinds,
        method=solver.method,
        n_iter=n_iter,
        n_flow=n_flow,
    )
