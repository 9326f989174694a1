"""Small ``torch.distributed`` reductions shared by the sharded analytical scores and metrics (DESIGN.md §7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shard_offset(n_local: int, device: torch.device, group: object = None) -> tuple[int, int]:
    """This rank's first global row and the total number of rows over the ranks of ``group``
    (shards concatenated in rank order)."""
    import torch.distributed as dist

    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, torch.tensor([n_local], dtype=torch.long, device=device), group=group)
    sizes = [int(c) for c in counts]
    return sum(sizes[: dist.get_rank(group)]), sum(sizes)


def all_gather_topk(scores: Tensor, payload: Tensor, k: int, group: object = None,
                    largest: bool = True) -> tuple[Tensor, Tensor]:
    """Global top-``k`` over the ranks of ``group``: each rank gives ``(B, k_r)`` candidate scores and
    their ``(B, k_r, *rest)`` payload; one all-gather each, then the best ``k`` per query (ranks with
    fewer than ``k`` candidates are padded with the worst score)."""
    import torch.distributed as dist

    b, kr = scores.shape
    if kr < k:
        worst = -math.inf if largest else math.inf
        scores = torch.cat([scores, scores.new_full((b, k - kr), worst)], 1)
        payload = torch.cat([payload, payload.new_zeros(b, k - kr, *payload.shape[2:])], 1)
    world = dist.get_world_size(group)
    all_s = [torch.empty_like(scores) for _ in range(world)]
    all_p = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(all_s, scores.contiguous(), group=group)
    dist.all_gather(all_p, payload.contiguous(), group=group)
    s, p = torch.cat(all_s, 1), torch.cat(all_p, 1)
    top, pos = s.topk(k, dim=1, largest=largest)
    index = pos.reshape(*pos.shape, *([1] * (p.dim() - 2))).expand(-1, -1, *p.shape[2:])
    return top, p.gather(1, index)
