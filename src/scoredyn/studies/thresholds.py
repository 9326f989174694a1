"""Every threshold a study verdict or a network quality gate uses, in one place.

Criteria (:mod:`scoredyn.studies.claims`) refer to these names; their text is generated from the
values, so the code, the report and docs/studies.md cannot disagree. A value marked "after seeing
a result" was chosen or changed after a first run; docs/studies.md lists each with its reason.
"""

from __future__ import annotations

# ------------------------------------------------------------------ numerics (float64 identities)
FLOAT64_IDENTITY = 1e-9  # two algebraically equal float64 computations agree to rounding
ADAPTIVE_FACTOR = 1e3  # Dormand-Prince on two equal ODEs: deviation <= this x rtol x data scale
LYAPUNOV_SLACK = 1e-10  # Delta log L / (1 + |log L|) >= -slack counts as "never decreases"
CRITICAL_FIELD = 1e-6  # |f(x_end)| <= this x median |f(x_0)|: an endpoint is a critical point
FRACTION_ALL = 0.95  # "every" trajectory, allowing 5% for integration to a finite tau
FRACTION_MOST = 0.8
EIG_RATIO = (0.9, 1.1)  # Jacobian eigenvalue / Kim's -(d/(d+1))/sigma_min
K_SIGMA = 3.0  # Theorem 4.4's neighbourhoods |x - x_i| < k sigma_min, with k = 3

# ------------------------------------------------------------------ memorization
COPY = 0.9  # a sampler "memorizes" when this fraction of its samples are copies (Gu et al. ratio < 1/3)
COPY_NONE = 0.05  # below this copy fraction a sampler copies (practically) nothing
COPY_RISE = 0.05  # a change in copy fraction smaller than this is noise (512 samples: s.e. <= 0.022)
COPY_GAP = 0.2  # "memorizes more": a copy fraction at least this much larger
NEW_NN = 0.5  # "new": median NN distance at least this x that of held-out data
EQ_GROWTH = 1.5  # equilibrium distance growing by this factor counts against "approach"

# ------------------------------------------------------------------ sample quality
GOOD_SW = 2.0  # "good": sliced W2 <= this x that of an independent data draw of the same size
SAMPLER_SAME = 1.25  # two samplers "as good": quality ratio <= this
SAMPLER_WORSE = 2.0  # ... and clearly worse above this
NO_LOSS = 1.05  # "no loss of quality": FID(skipped) / FID(unskipped) <= this
CLEAR_LOSS = 1.2  # a clear loss of quality above this ratio
SKIP_BAND = (0.15, 0.30)  # Wang & Vastola's "first 15-30% of the steps"

# ------------------------------------------------------------------ explained variance (Wang & Vastola)
UV_EXPLAINS = 0.1  # a model "explains" the network's score: unexplained variance <= this
UV_FAILS = 0.3  # ... and clearly does not above this
UV_NO_MODEL = 0.9  # no model explains the network's score: the best model's unexplained variance >= this
BASELINE_MARGIN = 2.0  # "explains beyond a baseline": the baseline's unexplained variance >= this x the model's
NAIVE_RANGE = 2.0  # "wider than naive theory": the Gaussian's range starts >= this factor below naive theory's
EARLY_DIP = 0.9  # "learned early": the minimum is <= this x the first checkpoint's value ...
EARLY_RISE = 1.05  # ... and the last checkpoint's value >= this x the minimum
MIN_CHECKPOINTS = 8  # "learned early" needs at least this many log-spaced checkpoints

# ------------------------------------------------------------------ quality gate for trained networks
GATE_FID = 2.0  # images: FID on the feature net <= this x the train-vs-held-out floor (after seeing a result)
GATE_SW = 2.0  # 2-D points: sliced W2 <= this x an independent data draw's (no feature net there)
GATE_NN = 1.5  # median NN distance to the training set <= this x that of held-out data
GATE_GAP = 0.0  # loss gap closed from the Gaussian (linear) denoiser toward the exact optimum >= this

# ------------------------------------------------------------------ smoothing (Zhou et al.)
SPEARMAN_TREND = -0.8  # a monotone trend: Spearman(setting, copy fraction) <= this
COPY_DROP = 0.3  # ... and the copy fraction at the strongest setting at least this much below T = 1
FEWER_COPIES = 0.1  # "fewer copies": a copy fraction at least this much lower
ON_DATA_NN = 2.0  # samples "on the data": median NN distance <= this x held-out data's
QUALITY_KEEP = 1.5  # quality "kept": quality ratio <= this
QUALITY_LOST = 3.0  # quality clearly lost above this ratio
RATIO_SPREAD = 0.05  # FID(G, test) / FID(G, train) ratios differing by less than this are not ordered
GAMMA_ORDERS = 10.0  # "orders of magnitude below": peak gamma_ex ratio >= this
GAMMA_NONE = 2.0  # ... and no real difference below this ratio
DOMINATION_TV = 0.1  # eq. 5's weights "match" the exact ones: mean total variation <= this
DOMINATION_FAIL = 0.3  # ... and clearly do not above this
