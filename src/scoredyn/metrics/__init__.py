"""Measures of memorization, sample quality and score agreement (DESIGN.md §5).

* :func:`memorization`: copies by the ``d(NN1)/d(NN2) < 1/3`` rule (Gu et al. 2023) and the
  fraction within ``k * sigma_min`` of a training point (Kim 2026, Thm 4.4); exact chunked k-NN.
* :func:`sliced_wasserstein`, :func:`mmd`, :func:`energy_distance`, :func:`precision_recall`.
* :func:`fid`, :func:`kid` on :func:`features` of a project classifier ("digits", "mnist") or a
  user-supplied Inception TorchScript file (see :data:`FEATURE_NOTE`).
* :func:`expansion_factor` (Zhou et al. 2026 §3.2) and :func:`fid_train_test` (their Table 1).
* :func:`log_likelihood`: per-sample log-likelihood through the probability-flow ODE.
* :func:`unexplained_variance`: Wang & Vastola's fraction of a reference score not explained by a model.
"""

from .distances import MMD_BANDWIDTH_NOTE, PrecisionRecall, energy_distance, mmd, precision_recall, sliced_wasserstein
from .expansion import ExpansionFactor, expansion_factor
from .features import FEATURE_NOTE, feature_net_info, features, load_feature_net
from .fid import KID, fid, frechet_distance, gaussian_moments, kid
from .generalization import FidTrainTest, fid_train_test
from .knn import knn
from .likelihood import LogLikelihood, log_likelihood
from .memorization import COPY_RATIO, Memorization, memorization
from .score_agreement import unexplained_variance

__all__ = [
    "COPY_RATIO",
    "FEATURE_NOTE",
    "KID",
    "MMD_BANDWIDTH_NOTE",
    "Memorization",
    "PrecisionRecall",
    "ExpansionFactor",
    "energy_distance",
    "expansion_factor",
    "feature_net_info",
    "features",
    "FidTrainTest",
    "fid",
    "fid_train_test",
    "frechet_distance",
    "gaussian_moments",
    "kid",
    "knn",
    "LogLikelihood",
    "log_likelihood",
    "load_feature_net",
    "memorization",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
    "unexplained_variance",
]
