"""FID against the training set and against held-out data (Zhou et al. 2026, arXiv 2601.19285, §5, Table 1).

``FID(G, train)`` and ``FID(G, test)`` are computed with reference sets of equal size (a plug-in FID
is biased by the sample counts, DESIGN.md §8): the larger of the two sets is subsampled, the training
set class-balanced when labels are given (the paper's CIFAR-10 protocol: a class-balanced train subset
the size of the test set; with test labels the train subset copies the test set's class counts).
``ratio = FID(G, test) / FID(G, train)``: a model that copies its training set is closer to it than
to held-out data (ratio above 1); the paper reads a smaller ratio as better generalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .._checks import check_data
from .._result import Result
from .features import features
from .fid import fid


@dataclass(frozen=True)
class FidTrainTest(Result):
    """``fid_train``, ``fid_test``, their ``ratio`` (test / train) and the set sizes used."""

    fid_train: float
    fid_test: float
    ratio: float
    n_samples: int
    n_reference: int


def balanced_subset(labels: Tensor, counts: dict[int, int], generator: torch.Generator) -> Tensor:
    """Random indices with ``counts[c]`` points of each class ``c`` (raises when a class is short)."""
    out = []
    for c, k in sorted(counts.items()):
        pool = torch.nonzero(labels.cpu() == c).reshape(-1)
        if len(pool) < k:
            raise ValueError(f"class {c} has {len(pool)} training points but the balanced subset needs {k}")
        out.append(pool[torch.randperm(len(pool), generator=generator)[:k]])
    return torch.cat(out).sort().values


def reference_sizes(labels: Tensor, n: int, test_labels: Optional[Tensor]) -> dict[int, int]:
    """Per-class counts of a class-balanced subset of ``n`` points (the test set's counts when given)."""
    if test_labels is not None:
        classes, cnt = torch.unique(test_labels.cpu(), return_counts=True)
        return {int(c): int(k) for c, k in zip(classes, cnt)}
    classes = torch.unique(labels.cpu()).tolist()
    base, extra = divmod(n, len(classes))
    return {int(c): base + (i < extra) for i, c in enumerate(classes)}


def fid_train_test(
    samples: Tensor,
    train: Tensor,
    test: Tensor,
    *,
    train_labels: Optional[Tensor] = None,
    test_labels: Optional[Tensor] = None,
    net: Union[str, nn.Module] = "digits",
    seed: int = 0,
) -> FidTrainTest:
    """``FID(samples, train)`` and ``FID(samples, test)`` on ``net``'s features with equal-size references.

    ``train_labels``: class labels of ``train`` for a class-balanced subset (``test_labels``, if given,
    fixes the per-class counts). Subsets are drawn from ``torch.Generator().manual_seed(seed)``.
    """
    for name, t in (("samples", samples), ("train", train), ("test", test)):
        check_data(name, t, min_points=2)
    if not (samples.shape[1:] == train.shape[1:] == test.shape[1:]):
        raise ValueError(f"samples, train and test must have the same point shape, got {tuple(samples.shape[1:])}, "
                         f"{tuple(train.shape[1:])}, {tuple(test.shape[1:])}")
    for name, lab, ref in (("train_labels", train_labels, train), ("test_labels", test_labels, test)):
        if lab is not None and (lab.dim() != 1 or lab.shape[0] != ref.shape[0]):
            raise ValueError(f"{name} must be a 1-D tensor with one label per point ({ref.shape[0]}), got {tuple(lab.shape)}")
    if test_labels is not None and train_labels is None:
        raise ValueError("test_labels are used only with train_labels (for the class-balanced train subset)")
    gen = torch.Generator().manual_seed(int(seed))
    n = min(train.shape[0], test.shape[0])
    if train_labels is not None:
        counts = reference_sizes(train_labels, n, test_labels)
        n = sum(counts.values())
        idx = balanced_subset(train_labels, counts, gen)
    else:
        idx = torch.randperm(train.shape[0], generator=gen)[:n].sort().values
    train_ref = train[idx.to(train.device)]
    test_ref = test if test.shape[0] == n else test[torch.randperm(test.shape[0], generator=gen)[:n].sort().values.to(test.device)]
    f_s, f_tr, f_te = (features(t, net) for t in (samples, train_ref, test_ref))
    a, b = fid(f_s, f_tr), fid(f_s, f_te)
    return FidTrainTest(a, b, b / a if a > 0 else float("inf"), samples.shape[0], n)
