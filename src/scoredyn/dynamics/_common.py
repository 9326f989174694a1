"""Small numerical pieces shared by the dynamics modules: rms norms, leader clustering."""

from __future__ import annotations

import torch
from torch import Tensor


def rms(z: Tensor) -> Tensor:
    """Root-mean-square over the flattened state, ``(B,)``: ``|z|_2 / sqrt(d)``."""
    return z.reshape(z.shape[0], -1).pow(2).mean(dim=1).sqrt()


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
