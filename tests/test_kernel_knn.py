"""The block-minimum candidate search of the exact k-NN (metrics/knn.py ``_smallest``), against ``topk``."""

from __future__ import annotations

import pytest
import torch

from scoredyn.metrics import knn
from scoredyn.metrics.knn import SEARCH_BLOCK, _smallest


@pytest.mark.parametrize("layout", ["spread", "one block", "ties"])
def test_smallest_equals_topk(layout: str) -> None:
    g = torch.Generator().manual_seed(7)
    d2 = torch.rand(50, 16 * SEARCH_BLOCK, generator=g)
    if layout == "one block":  # all six smallest in one block: the other five chosen blocks hold none of them
        d2[:, 3 * SEARCH_BLOCK : 3 * SEARCH_BLOCK + 6] = -torch.rand(50, 6, generator=g)
    elif layout == "ties":  # rounded values: many equal entries across blocks
        d2 = (d2 * 20).round()
    d, cols = _smallest(d2, 6)
    ref, _ = torch.topk(d2, 6, dim=1, largest=False)
    assert torch.equal(d.sort(1).values, ref), f"{layout}: values differ from topk"
    assert torch.equal(d2.gather(1, cols), d), f"{layout}: columns do not point at the values"
    assert all(len(set(r.tolist())) == 6 for r in cols), f"{layout}: a column chosen twice"


def test_smallest_falls_back_on_odd_widths() -> None:
    g = torch.Generator().manual_seed(8)
    for d2 in (torch.rand(5, 100, generator=g), torch.rand(5, 640, generator=g)[:, :320]):  # tail; non-contiguous
        d, cols = _smallest(d2, 6)
        assert torch.equal(d.sort(1).values, torch.topk(d2, 6, dim=1, largest=False).values)


def test_knn_with_block_search_matches_float64() -> None:
    """Chunks of 512 columns go through the block search; near copies and ties by index against float64."""
    g = torch.Generator().manual_seed(9)
    data = torch.rand(3000, 40, generator=g)
    q = torch.cat([data[::300] + 1e-4 * torch.randn(10, 40, generator=g), torch.rand(30, 40, generator=g)])
    dist, idx = knn(q, data, k=3, chunk_size=512)
    ref = torch.cdist(q.double(), data.double(), compute_mode="donot_use_mm_for_euclid_dist")
    rd, ri = ref.topk(3, dim=1, largest=False)
    assert torch.equal(idx, ri) and torch.allclose(dist, rd, rtol=1e-12, atol=0.0)
