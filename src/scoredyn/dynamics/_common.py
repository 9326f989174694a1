"""Small numerical pieces shared by the dynamics modules: an RK4 step, rms norms, leader clustering."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .jacobian import FlatField


def rms(z: Tensor) -> Tensor:
    """Root-mean-square over the flattened state, ``(B,)``: ``|z|_2 / sqrt(d)``."""
    return z.reshape(z.shape[0], -1).pow(2).mean(dim=1).sqrt()


def rk4_step(f: FlatField, z: Tensor, h: Union[float, Tensor], k1: Tensor | None = None) -> Tensor:
    """One classical Runge-Kutta step of ``dz/dtau = f(z)`` (``h``: float or ``(B, 1)``)."""
    k1 = f(z) if k1 is None else k1
    k2 = f(z + 0.5 * h * k1)
    k3 = f(z + 0.5 * h * k2)
    k4 = f(z + h * k3)
    return z + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def leader_clusters(z: Tensor, tol: float, priority: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Greedy leader clustering of ``z`` ``(B, d)``: labels ``(B,)`` and leader indices ``(K,)``.

    The unassigned point with the lowest ``priority`` (default: its index) becomes a leader and
    takes every unassigned point within Euclidean distance ``tol``; repeat. ``O(B K d)`` work,
    ``O(B)`` memory (no ``B x B`` distance matrix), one device sync per cluster.
    """
    b = z.shape[0]
    order = torch.arange(b, device=z.device) if priority is None else torch.argsort(priority, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(b, device=z.device)
    labels = torch.full((b,), -1, dtype=torch.long, device=z.device)
    leaders: list[int] = []
    big = torch.full((b,), b, dtype=order.dtype, device=z.device)
    while True:
        free = labels < 0
        if not bool(free.any()):
            break
        lead = int(torch.argmin(torch.where(free, rank, big)))
        near = free & ((z - z[lead]).norm(dim=1) <= tol)
        near[lead] = True
        labels[near] = len(leaders)
        leaders.append(lead)
    return labels, torch.tensor(leaders, dtype=torch.long, device=z.device)
