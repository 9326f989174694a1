"""Section 3: sample quality. FID, KID and k-NN precision / recall on a feature network (the project's
digits or MNIST classifier, an Inception TorchScript file when given, else the raw coordinates), with
the floor the data sets themselves reach: training vs held-out data at the same sample count."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .. import metrics
from ..studies.report import Section, Table
from .context import STREAM_SUBSET, Analysis

#: The project feature net for each image shape it was trained on.
FEATURE_NETS = {(1, 8, 8): "digits", (1, 28, 28): "mnist"}


def feature_net(a: Analysis) -> str:
    """``cfg.fid_net`` or, by data shape, ``digits`` / ``mnist``, else ``raw`` (the flattened data)."""
    if a.cfg.fid_net is not None:
        return a.cfg.fid_net
    return FEATURE_NETS.get(a.shape, "raw")


def featurize(a: Analysis, x: Tensor) -> Tensor:
    """Features of ``x`` on :func:`feature_net` (images clamped to the [-1, 1] the nets take)."""
    net = feature_net(a)
    if net == "raw":
        return x.reshape(x.shape[0], -1).float()
    return metrics.features(x.float().clamp(-1, 1), net=net)


def scores(fa: Tensor, fb: Tensor, seed: int) -> dict[str, float]:
    """FID, KID (mean over subsets) and precision / recall of features ``fa`` (generated) against ``fb`` (real)."""
    k = 3 if min(fa.shape[0], fb.shape[0]) > 3 else 1
    pr = metrics.precision_recall(fa, fb, k=k)
    kid = metrics.kid(fa, fb, n_subsets=50, subset_size=min(1000, fa.shape[0], fb.shape[0]), seed=seed)
    return {"fid": metrics.fid(fa, fb), "kid": kid.mean, "precision": pr.precision, "recall": pr.recall}


def compute(a: Analysis, model: dict[str, Any], emp: dict[str, Any]) -> dict[str, Any]:
    """The quality rows at one sample count ``m`` (a cached stage)."""
    ref = a.reference
    per_set = ref.shape[0] if a.heldout is not None else ref.shape[0] // 2  # no held-out: two disjoint halves
    m = min(a.cfg.n_samples, a.cfg.n_reference, per_set)
    m_train = min(m, a.train.shape[0])  # a small training set gives its rows at a smaller count

    def work() -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        f_ref = featurize(a, a.subset(ref, m, STREAM_SUBSET))
        f_model = featurize(a, model["x"][:m])
        rows.append({"pair": f"model samples vs {a.reference_name} data", "n": m,
                     **scores(f_model, f_ref, a.ctx.seed)})
        rows.append({"pair": f"empirical-denoiser samples vs {a.reference_name} data", "n": m,
                     **scores(featurize(a, emp["x"][:m]), f_ref, a.ctx.seed)})
        if a.heldout is not None:
            f_train = featurize(a, a.subset(a.train, m_train, STREAM_SUBSET + 100))
            rows.append({"pair": "model samples vs training data", "n": m_train,
                         **scores(f_model[:m_train], f_train, a.ctx.seed)})
            rows.append({"pair": "floor: training vs held-out data", "n": m_train,
                         **scores(f_train, f_ref[:m_train], a.ctx.seed)})
        else:  # the floor from two disjoint halves of the training set
            perm = torch.randperm(ref.shape[0], generator=torch.Generator().manual_seed(a.ctx.seed))
            half_a, half_b = ref[perm[:m].to(ref.device)], ref[perm[m : 2 * m].to(ref.device)]
            rows.append({"pair": "floor: training data, one half vs the other", "n": m,
                         **scores(featurize(a, half_a), featurize(a, half_b), a.ctx.seed)})
        return {"rows": rows, "m": m, "net": feature_net(a)}

    return a.stage("quality", {"m": m, "m_train": m_train, "net": feature_net(a), **a.sampling(),
                               "n": a.cfg.n_samples}, work)


def section(a: Analysis, q: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The quality table and its headline numbers."""
    rows = [[r["pair"], r["n"], r["fid"], r["kid"], r["precision"], r["recall"]] for r in q["rows"]]
    net = q["net"]
    what = ("raw coordinates (no feature network for this data shape; pass fid_net='inception:PATH' for images)"
            if net == "raw" else f"the {net!r} feature network")
    t = Table("quality", f"Sample quality on {what}",
              ["compared sets", "points per set", "FID", "KID", "precision", "recall"], rows,
              "FID: Frechet distance of Gaussians fitted to the features (Heusel et al. 2017); KID: unbiased MMD^2 "
              "with the cubic kernel (Binkowski et al. 2018); precision / recall: k-NN manifolds, k = 3 "
              "(Kynkaanniemi et al. 2019). The floor row is what two samples of real data reach at this count: "
              "a model cannot be told apart from the data below it. FID is biased upwards at small counts: compare "
              "rows with the same number of points only.")
    floor = next(r for r in q["rows"] if r["pair"].startswith("floor"))
    head = {"fid": q["rows"][0]["fid"], "fid_points": q["rows"][0]["n"], "fid_floor": floor["fid"],
            "fid_floor_points": floor["n"], "fid_empirical": q["rows"][1]["fid"],
            "precision": q["rows"][0]["precision"], "recall": q["rows"][0]["recall"]}
    text = f"Features: {what}."
    if net != "raw":
        text += " " + metrics.FEATURE_NOTE
    return Section("3. Quality", text, tables=[t]), head


def fid_to_reference(a: Analysis, x: Tensor, f_ref: Optional[Tensor] = None) -> float:
    """FID of samples ``x`` against the reference data at ``x``'s count (used by the skip sweep)."""
    if f_ref is None:
        f_ref = featurize(a, a.subset(a.reference, x.shape[0], STREAM_SUBSET))
    return metrics.fid(featurize(a, x), f_ref)
