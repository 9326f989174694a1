"""Batched Arnoldi, GMRES and Ritz values on Jacobian-vector products (matrix-free, no ``d x d`` matrix).

Every sample ``b`` has its own operator ``A_b`` (the Jacobian at its state); one call of ``A`` applies
all of them to a ``(B, d)`` batch of vectors. Krylov bases are ``(B, m+1, d)``; Hessenbergs ``(B, m+1, m)``.
References: Saad & Schultz (1986) GMRES with Givens rotations; Saad, *Iterative Methods*, §6.3-6.5.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


class Arnoldi:
    """Arnoldi process with classical Gram-Schmidt applied twice (CGS2), batched over samples.

    A sample whose Krylov space becomes invariant (``h_{j+1,j} <= 100 eps |A v_j|``: a "happy
    breakdown") gets zero basis vectors and zero Hessenberg columns from then on; ``size`` records
    the dimension of its Krylov space.
    """

    def __init__(self, v0: Tensor, m: int) -> None:
        b, d = v0.shape
        self.m = m
        self.j = 0
        self.beta = v0.norm(dim=1)
        self.V = v0.new_zeros(b, m + 1, d)
        self.V[:, 0] = v0 / torch.where(self.beta > 0, self.beta, torch.ones_like(self.beta))[:, None]
        self.H = v0.new_zeros(b, m + 1, m)
        self.size = torch.where(self.beta > 0, 1, 0).to(torch.long)
        self._eps = torch.finfo(v0.dtype).eps

    def step(self, matvec: MatVec) -> None:
        """Add one basis vector (one batched matrix-vector product)."""
        j = self.j
        w = matvec(self.V[:, j])
        nw = w.norm(dim=1)
        basis = self.V[:, : j + 1]
        for _ in range(2):
            h = torch.einsum("bkd,bd->bk", basis, w)
            w = w - torch.einsum("bk,bkd->bd", h, basis)
            self.H[:, : j + 1, j] += h
        hn = w.norm(dim=1)
        brk = hn <= 100 * self._eps * nw
        hn = torch.where(brk, torch.zeros_like(hn), hn)
        self.V[:, j + 1] = torch.where(brk[:, None], torch.zeros_like(w), w / torch.where(brk, torch.ones_like(hn), hn)[:, None])
        self.H[:, j + 1, j] = hn
        self.size = self.size + (~brk & (self.size == j + 1)).to(torch.long)
        self.j = j + 1


def gmres(matvec: MatVec, rhs: Tensor, m: int, eta: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``A_b x_b = rhs_b`` from ``x_0 = 0`` until ``|r_b| <= eta_b |rhs_b|`` for all ``b`` or ``m`` steps.

    Returns ``(x (B, d), H (B, k+1, k))`` with ``k`` the number of Arnoldi steps taken. The residual
    is tracked with Givens rotations; the small least-squares problem is solved with a
    pseudo-inverse, so invariant (broken-down) Krylov spaces give the exact minimal-norm answer.
    """
    arn = Arnoldi(rhs, m)
    b = rhs.shape[0]
    cs = rhs.new_zeros(b, m)
    sn = rhs.new_zeros(b, m)
    g = rhs.new_zeros(b, m + 1)
    g[:, 0] = arn.beta
    k = m
    for j in range(m):
        arn.step(matvec)
        col = arn.H[:, : j + 2, j].clone()
        for i in range(j):
            a, c = col[:, i].clone(), col[:, i + 1].clone()
            col[:, i] = cs[:, i] * a + sn[:, i] * c
            col[:, i + 1] = -sn[:, i] * a + cs[:, i] * c
        r = torch.hypot(col[:, j], col[:, j + 1])
        pos = r > 0
        safe = torch.where(pos, r, torch.ones_like(r))
        cs[:, j] = torch.where(pos, col[:, j] / safe, torch.ones_like(r))
        sn[:, j] = torch.where(pos, col[:, j + 1] / safe, torch.zeros_like(r))
        g[:, j + 1] = -sn[:, j] * g[:, j]
        g[:, j] = cs[:, j] * g[:, j]
        if bool((g[:, j + 1].abs() <= eta * arn.beta).all()):
            k = j + 1
            break
    hk = arn.H[:, : k + 1, :k]
    e1 = rhs.new_zeros(b, k + 1, 1)
    e1[:, 0, 0] = arn.beta
    y = (torch.linalg.pinv(hk) @ e1).squeeze(-1)
    return torch.einsum("bk,bkd->bd", y, arn.V[:, :k]), hk


def start_vector(b: int, d: int, like: Tensor) -> Tensor:
    """A fixed pseudo-random start vector (seed 0, drawn on the CPU), the same on every device and batch."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    return v.expand(b, d).clone()


def ritz_values(matvec: MatVec, v0: Tensor, m: int, k: int) -> Tensor:
    """Extreme Ritz values of each ``A_b`` after ``m`` Arnoldi steps: the ``k - 1`` rightmost and the
    leftmost, sorted by decreasing real part, ``(B, k)`` complex (``k >= 2``).

    The extremes of the spectrum are where Arnoldi's Ritz values converge first; the rightmost
    decide stability, the leftmost tells a saddle from an unstable point. When a sample's Krylov
    space closes after ``s < k`` steps its ``s`` Ritz values are exact eigenvalues, and the
    leftmost of them is repeated to fill the row.
    """
    arn = Arnoldi(v0, m)
    for _ in range(m):
        arn.step(matvec)
        if bool((arn.size < arn.j + 1).all()):
            break
    b = v0.shape[0]
    cdtype = torch.complex128 if v0.dtype == torch.float64 else torch.complex64
    out = torch.empty(b, k, dtype=cdtype, device=v0.device)
    size = arn.size.clamp(min=1, max=arn.j)
    for s in torch.unique(size).tolist():
        sel = (size == s).nonzero().flatten()
        ev = torch.linalg.eigvals(arn.H[sel, :s, :s])
        ev = torch.gather(ev, 1, torch.argsort(ev.real, dim=1, descending=True))
        if s >= k:
            out[sel] = torch.cat([ev[:, : k - 1], ev[:, -1:]], dim=1)
        else:
            out[sel] = torch.cat([ev, ev[:, -1:].expand(-1, k - s)], dim=1)
    return out
