"""The exact k-NN's candidate stage (metrics/knn.py): the running top-k that skips rows a chunk cannot change."""

from __future__ import annotations

import pytest
import torch

from scoredyn.metrics import knn
from scoredyn.metrics.knn import _candidates_torch, distance_blocks


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_candidates_are_the_smallest_matmul_distances(chunk: int) -> None:
    """Same values as one ``topk`` over the whole (B, N) matrix of the same matmul distances, duplicates included."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(1000, 20, generator=g)
    x[500:520] = x[100:120]  # exact duplicates: ties between chunks
    q = torch.cat([x[::50] + 1e-3 * torch.randn(20, 20, generator=g), torch.rand(40, 20, generator=g)])
    cand = _candidates_torch(q, x, 6, chunk)
    full = torch.cat([d2.clone() for _, d2 in distance_blocks(q, x, chunk, rank_only=True)], 1)
    got = full.gather(1, cand).sort(1).values
    want = full.topk(6, dim=1, largest=False).values
    assert torch.equal(got, want), f"chunk={chunk}: candidate distances differ from topk"
    assert all(len(set(r.tolist())) == 6 for r in cand), f"chunk={chunk}: an index chosen twice"


def test_knn_matches_float64_with_many_chunks() -> None:
    """Near copies and far queries over 47 chunks against float64 distances from direct differences."""
    g = torch.Generator().manual_seed(9)
    data = torch.rand(3000, 40, generator=g)
    q = torch.cat([data[::300] + 1e-4 * torch.randn(10, 40, generator=g), torch.rand(30, 40, generator=g), 50 + torch.rand(4, 40, generator=g)])
    dist, idx = knn(q, data, k=3, chunk_size=64)
    ref = torch.cdist(q.double(), data.double(), compute_mode="donot_use_mm_for_euclid_dist")
    rd, ri = ref.topk(3, dim=1, largest=False)
    assert torch.equal(idx, ri) and torch.allclose(dist, rd, rtol=1e-12, atol=0.0)
