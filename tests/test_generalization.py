"""FID(G, train) / FID(G, test) with equal-size, class-balanced references (Zhou et al. 2026, Table 1)."""

from __future__ import annotations

import pytest
import torch

from scoredyn import data as sd_data
from scoredyn.metrics import features, fid, fid_train_test
from scoredyn.metrics.generalization import balanced_subset, reference_sizes


def _digits():
    x, y = sd_data.load_labeled("digits", split="train")
    xt, yt = sd_data.load_labeled("digits", split="test")
    return x, y, xt, yt


def test_copies_of_train_are_closer_to_train_than_to_test():
    x, y, xt, yt = _digits()
    copies = x[: len(xt)]
    res = fid_train_test(copies, x, xt, train_labels=y)
    assert res.n_reference == min(len(x), len(xt))
    assert res.fid_train < res.fid_test and res.ratio > 1, res.as_dict()
    # held-out samples: symmetric roles, the ratio is near 1 or below
    res2 = fid_train_test(xt, x, xt, train_labels=y)
    assert res2.ratio < res.ratio, (res.as_dict(), res2.as_dict())


def test_equal_size_reference_and_hand_computation():
    x, y, xt, yt = _digits()
    samples = xt[:200]
    res = fid_train_test(samples, x, xt, seed=3)
    g = torch.Generator().manual_seed(3)
    n = min(len(x), len(xt))
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    te = xt if len(xt) == n else xt[torch.randperm(len(xt), generator=g)[:n].sort().values]
    fs = features(samples)
    assert res.fid_train == pytest.approx(fid(fs, features(x[idx])), rel=1e-12)
    assert res.fid_test == pytest.approx(fid(fs, features(te)), rel=1e-12)
    assert res.ratio == pytest.approx(res.fid_test / res.fid_train)


def test_class_balanced_subset():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    counts = reference_sizes(labels, 8, None)
    assert counts == {0: 3, 1: 3, 2: 2}
    idx = balanced_subset(labels, counts, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 2]
    assert reference_sizes(labels, 5, torch.tensor([2, 2, 0, 1, 1])) == {0: 1, 1: 2, 2: 2}
    with pytest.raises(ValueError, match="class 1"):
        balanced_subset(labels, {1: 4}, torch.Generator())


def test_bad_inputs():
    x, y, xt, _ = _digits()
    with pytest.raises(ValueError, match="same point shape"):
        fid_train_test(x[:10, :, :4], x, xt)
    with pytest.raises(ValueError, match="train_labels"):
        fid_train_test(x[:10], x, xt, train_labels=y[:5])
