"""scoredyn.metrics: memorization, k-NN, distribution distances, FID/KID, unexplained variance.

Oracles: float64 brute force from direct differences, closed forms for Gaussians (with Monte-Carlo
tolerances from independent replicates: |mean - exact| < 4 standard errors), explicit double loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import gammaln, hyp1f1
from scipy.spatial.distance import cdist as np_cdist
from scipy.spatial.distance import pdist

from scoredyn.metrics import (
    COPY_RATIO,
    energy_distance,
    features,
    fid,
    frechet_distance,
    kid,
    knn,
    memorization,
    mmd,
    precision_recall,
    sliced_wasserstein,
    unexplained_variance,
)
from scoredyn.metrics.knn import faiss_available


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_knn(q: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 distances from direct differences (no matmul), sorted."""
    d = torch.cdist(q.reshape(len(q), -1).double(), x.reshape(len(x), -1).double(),
                    compute_mode="donot_use_mm_for_euclid_dist")
    return torch.topk(d, k, dim=1, largest=False)


def replicate_check(values: list[float], exact: float, what: str) -> None:
    """Monte-Carlo check: the mean of independent replicates within 4 standard errors of ``exact``."""
    v = torch.tensor(values, dtype=torch.float64)
    mean, se = float(v.mean()), float(v.std() / math.sqrt(len(v)))
    assert abs(mean - exact) < 4 * se, f"{what}: mean {mean:.5f} +- {se:.5f} (SE) vs closed form {exact:.5f}"
    assert 4 * se < 0.1 * abs(exact), f"{what}: the test has no power, SE {se:.3g} vs value {exact:.3g}"


# ----------------------------------------------------------------------------------- memorization
@pytest.fixture(scope="module")
def constructed() -> dict:
    g = gen(0)
    train = torch.rand(400, 1, 8, 8, generator=g) * 2 - 1
    copies = train[:10].clone()
    near = train[10:20] + 1e-4 * torch.randn(10, 1, 8, 8, generator=g)
    mid = (train[20:30] + train[30:40]) / 2
    fresh = torch.rand(10, 1, 8, 8, generator=g) * 2 - 1
    return {"train": train, "samples": torch.cat([copies, near, mid, fresh])}


def test_memorization_constructed_samples(constructed: dict) -> None:
    train, samples = constructed["train"], constructed["samples"]
    out = memorization(samples, train)
    expected = torch.tensor([True] * 20 + [False] * 20)
    assert torch.equal(out.is_copy, expected), f"copies flagged {out.is_copy.int().tolist()}"
    assert out.copy_fraction == 0.5
    assert torch.equal(out.nn_index[:20], torch.arange(20)), out.nn_index[:20].tolist()
    # midpoints are equidistant from their two parents (up to the float32 rounding of the midpoint)
    assert torch.allclose(out.ratio[20:30], torch.ones(10, dtype=torch.float64), atol=1e-6), out.ratio[20:30]
    parents = torch.stack([torch.arange(20, 30), torch.arange(30, 40)], 1)
    assert bool((out.nn_index[20:30, None] == parents).any(1).all()), out.nn_index[20:30]
    d, i = brute_knn(samples, train, 2)
    oracle = d[:, 0] / d[:, 1]
    err = float((out.ratio - oracle).abs().max())
    assert err < 1e-12, f"ratio vs float64 brute force: max error {err:.3g}"
    assert torch.equal(out.nn_index[30:], i[30:, 0]), "nearest index differs from brute force"
    assert torch.equal(out.nn_distance, d[:, 0]) or float((out.nn_distance - d[:, 0]).abs().max()) < 1e-12
    near_ratio = oracle[10:20]
    assert float(near_ratio.max()) < 1e-3 and float(near_ratio.min()) > 0, f"near-copy ratios {near_ratio}"
    err_near = float(((out.ratio[10:20] - near_ratio) / near_ratio).abs().max())
    assert err_near < 1e-9, f"near-copy ratio relative error {err_near:.3g} (matmul cancellation not corrected?)"


def test_memorization_duplicated_training_point() -> None:
    train = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    out = memorization(torch.tensor([[0.0, 0.0], [3.0, 4.0 + 1e-6], [1.5, 2.0]], dtype=torch.float64), train)
    assert out.ratio.tolist()[0] == 0.0 and out.is_copy.tolist() == [True, True, False], out.ratio
    assert abs(float(out.ratio[1]) - 1e-6 / math.hypot(3.0, 4.0 + 1e-6)) < 1e-15, out.ratio[1]


def test_memorization_within_k_sigma_and_quantiles() -> None:
    g = gen(1)
    train = torch.randn(200, 16, generator=g, dtype=torch.float64) * 3
    direction = torch.randn(50, 16, generator=g, dtype=torch.float64)
    direction /= direction.norm(dim=1, keepdim=True)
    radius = torch.linspace(0.01, 0.5, 50, dtype=torch.float64)
    samples = train[:50] + radius[:, None] * direction
    out = memorization(samples, train, sigma_min=0.1, k=2.0)
    d, _ = brute_knn(samples, train, 2)
    assert torch.allclose(out.nn_distance, radius, rtol=1e-12), "nearest distances should be the radii"
    expected = float((radius <= 0.2).double().mean())
    assert out.within_k_sigma == {2.0: expected}, f"within_k_sigma {out.within_k_sigma} vs {expected}"
    q = torch.quantile(d[:, 0], torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    got = torch.tensor([out.nn_distance_quantiles[p] for p in (0.05, 0.5, 0.95)], dtype=torch.float64)
    assert torch.allclose(got, q, rtol=1e-12), f"quantiles {got} vs {q}"
    assert memorization(samples, train).within_k_sigma == {}
    many = memorization(samples, train, sigma_min=0.1, k=(1.05, 2.0))
    assert many.within_k_sigma == {1.05: float((radius <= 0.105).double().mean()), 2.0: expected}, many.within_k_sigma
    assert many.as_dict()["within_k_sigma"] == {"1.05": many.within_k_sigma[1.05], "2.0": expected}


def test_memorization_chunked_equals_unchunked(constructed: dict) -> None:
    train, samples = constructed["train"], constructed["samples"]
    full = memorization(samples, train)
    for chunk in (1, 7, 399, 10_000):
        part = memorization(samples, train, chunk_size=chunk)
        for key in ("nn_index", "nn_distance", "ratio"):
            assert torch.equal(getattr(part, key), getattr(full, key)), f"chunk_size={chunk}: {key} differs"


def test_knn_matches_brute_force_with_offset_data() -> None:
    # a large common offset makes the matmul form cancel; exact recompute must still be right
    g = gen(2)
    x = torch.randn(300, 20, generator=g) + 50.0
    q = torch.cat([x[:5] + 1e-3 * torch.randn(5, 20, generator=g), torch.randn(20, 20, generator=g) + 50.0])
    d, i = knn(q, x, k=5, chunk_size=64)
    bd, bi = brute_knn(q, x, 5)
    assert torch.equal(i, bi), "k-NN indices differ from float64 brute force"
    err = float(((d - bd) / bd).abs().max())
    assert err < 1e-12, f"k-NN distances: max relative error {err:.3g}"


def test_knn_survives_matmul_misranking() -> None:
    # pairs of training points whose distances to a query differ by 1e-4 relative: below what the
    # float32 matmul form resolves at this data scale (points 100 apart), so the candidate stage
    # must carry extra candidates for the float64 re-ranking to find the true nearest
    g = gen(14)
    centers = torch.randn(40, 16, generator=g)
    centers = 100 * centers / centers.norm(dim=1, keepdim=True)
    u = torch.randn(40, 2, 16, generator=g)
    u = u / u.norm(dim=2, keepdim=True)
    radii = torch.tensor([1.0 + 1e-4, 1.0])
    train = (centers[:, None, :] + radii[None, :, None] * u).reshape(80, 16)
    d, i = knn(centers, train, k=1, chunk_size=16)
    bd, bi = brute_knn(centers, train, 1)
    assert torch.equal(i, bi), f"{int((i != bi).sum())} of 40 nearest neighbours mis-ranked"
    assert torch.equal(i[:, 0], torch.arange(40) * 2 + 1)


def test_gaussian_moments_match_numpy() -> None:
    from scoredyn.metrics import gaussian_moments

    x = torch.randn(50, 4, generator=gen(15), dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + 1.0
    mu, cov = gaussian_moments(x)
    assert np.allclose(mu.numpy(), x.numpy().mean(0), rtol=1e-14)
    assert np.allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-12, atol=0)


@pytest.mark.skipif(not faiss_available(), reason="faiss (optional extra scoredyn[faiss]) is not installed")
def test_knn_faiss_backend_matches_torch(constructed: dict) -> None:
    train, samples = constructed["train"], constructed["samples"]
    d1, i1 = knn(samples, train, k=2, backend="torch")
    d2, i2 = knn(samples, train, k=2, backend="faiss")
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_memorization_bad_input(constructed: dict) -> None:
    train, samples = constructed["train"], constructed["samples"]
    with pytest.raises(ValueError, match=r"expected \(B, 1, 8, 8\)"):
        memorization(samples.reshape(len(samples), -1), train)
    with pytest.raises(ValueError, match="at least 2 training points"):
        memorization(samples, train[:1])
    bad = samples.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        memorization(bad, train)
    for k in (0.0, -1.0):
        with pytest.raises(ValueError, match="k must be > 0"):
            memorization(samples, train, k=k)
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        memorization(samples, train, sigma_min=0.0)
    with pytest.raises(ValueError, match="k=3 neighbours"):
        knn(samples, train[:2], k=3)
    with pytest.raises(ValueError, match="chunk_size"):
        memorization(samples, train, chunk_size=0)


# ------------------------------------------------------------------------------------ distances
def gaussians(n: int, d: int, m: torch.Tensor, s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``a ~ N(0, I)``, ``b ~ N(m, s^2 I)`` in float64."""
    a = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    b = s * torch.randn(n, d, generator=gen(seed + 10_000), dtype=torch.float64) + m
    return a, b


def test_sliced_wasserstein_closed_forms() -> None:
    d = 3
    # N(0, I) vs N(0, s^2 I): every projection has W2^2 = (1 - s)^2
    vals = [sliced_wasserstein(*gaussians(2000, d, torch.zeros(d), 1.5, r), n_projections=32, seed=r) ** 2
            for r in range(12)]
    replicate_check(vals, 0.25, "SW2^2 of N(0,I) vs N(0,1.5^2 I)")
    # N(0, I) vs N(m, I): W2^2 = (theta.m)^2, mean over the sphere |m|^2 / d
    m = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
    vals = [sliced_wasserstein(*gaussians(1000, d, m, 1.0, 100 + r), n_projections=512, seed=r) ** 2
            for r in range(16)]
    replicate_check(vals, float((m**2).sum()) / d, "SW2^2 of N(0,I) vs N(m,I)")


def test_sliced_wasserstein_unequal_sizes_exact() -> None:
    # replicating each point of a m times and of b n times gives equal-size sets with the same
    # empirical distributions, where W2 is the plain sorted-difference formula
    g = gen(3)
    a = torch.randn(7, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64) + 0.3
    got = sliced_wasserstein(a, b, n_projections=16, seed=5)
    ref = sliced_wasserstein(a.repeat_interleave(5, 0), b.repeat_interleave(7, 0), n_projections=16, seed=5)
    assert abs(got - ref) < 1e-12, f"unequal sizes {got} vs replicated {ref}"
    one = torch.randn(9, 1, generator=g, dtype=torch.float64)
    two = torch.randn(9, 1, generator=g, dtype=torch.float64)
    exact = float(((one.sort(0).values - two.sort(0).values) ** 2).mean().sqrt())
    assert abs(sliced_wasserstein(one, two, n_projections=3) - exact) < 1e-12
    assert sliced_wasserstein(a, a) == 0.0


def rbf_gauss_expectation(delta: torch.Tensor, var: float, h: float) -> float:
    """``E exp(-|Z|^2 / (2 h^2))`` for ``Z ~ N(delta, var I_d)``."""
    d = delta.numel()
    return (1 + var / h**2) ** (-d / 2) * math.exp(-0.5 * float((delta**2).sum()) / (var + h**2))


def mean_norm(delta: torch.Tensor, var: float) -> float:
    """``E|Z|`` for ``Z ~ N(delta, var I_d)``: the mean of a scaled noncentral chi distribution."""
    d = delta.numel()
    lam = float((delta**2).sum()) / var
    return math.sqrt(2 * var) * math.exp(gammaln((d + 1) / 2) - gammaln(d / 2)) * hyp1f1(-0.5, d / 2, -lam / 2)


def test_mmd_and_energy_closed_forms() -> None:
    d, h, s = 3, 1.5, 1.5
    m = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
    z = torch.zeros(d, dtype=torch.float64)
    exact_mmd = rbf_gauss_expectation(z, 2, h) + rbf_gauss_expectation(z, 2 * s * s, h) - 2 * rbf_gauss_expectation(m, 1 + s * s, h)
    exact_energy = 2 * mean_norm(m, 1 + s * s) - mean_norm(z, 2) - mean_norm(z, 2 * s * s)
    # the noncentral-chi formula against the 1-D folded normal mean (independent check of the oracle)
    mu, sd = 0.7, 1.3
    folded = sd * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * sd**2)) + mu * math.erf(mu / (sd * math.sqrt(2)))
    assert abs(mean_norm(torch.tensor([mu], dtype=torch.float64), sd**2) - folded) < 1e-12
    sets = [gaussians(800, d, m, s, 200 + r) for r in range(12)]
    replicate_check([mmd(a, b, bandwidth=h) for a, b in sets], exact_mmd, "RBF MMD^2 between Gaussians")
    replicate_check([energy_distance(a, b) for a, b in sets], exact_energy, "energy distance between Gaussians")


def test_mmd_energy_match_brute_force_u_statistics() -> None:
    g = gen(4)
    a = torch.randn(40, 3, generator=g, dtype=torch.float64)
    b = torch.randn(30, 3, generator=g, dtype=torch.float64) * 1.2 + 0.4
    A, B = a.numpy(), b.numpy()
    pooled = np.concatenate([A, B])
    h = float(np.median(pdist(pooled)))

    def u_mean(k: np.ndarray) -> float:
        return (k.sum() - np.trace(k)) / (k.shape[0] * (k.shape[0] - 1))

    rbf = lambda x, y, hh: np.exp(-np_cdist(x, y, "sqeuclidean") / (2 * hh * hh))  # noqa: E731
    for bw, hs in ((None, [h]), (0.8, [0.8]), ([0.5, 2.0], [0.5, 2.0])):
        ref = np.mean([u_mean(rbf(A, A, x)) + u_mean(rbf(B, B, x)) - 2 * rbf(A, B, x).mean() for x in hs])
        got = mmd(a, b, bandwidth=bw)
        assert abs(got - ref) < 1e-12, f"MMD^2 bandwidth={bw}: {got} vs brute force {ref}"
    ref_e = 2 * np_cdist(A, B).mean() - u_mean(np_cdist(A, A)) - u_mean(np_cdist(B, B))
    assert abs(energy_distance(a, b) - ref_e) < 1e-12, f"energy {energy_distance(a, b)} vs {ref_e}"
    poly = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    ref_p = u_mean(poly(A, A)) + u_mean(poly(B, B)) - 2 * poly(A, B).mean()
    assert abs(mmd(a, b, kernel="polynomial") - ref_p) < 1e-10


def test_precision_recall() -> None:
    g = gen(5)
    a = torch.randn(300, 4, generator=g)
    assert precision_recall(a, a).as_dict() == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(a + 100.0, a).as_dict() == {"precision": 0.0, "recall": 0.0}
    # partial overlap against an explicit loop (Kynkaenniemi et al. 2019, eq. 1-3)
    b = torch.randn(200, 4, generator=g) * 1.5 + 0.7
    A, B = a.double().numpy(), b.double().numpy()

    def coverage(q: np.ndarray, ref: np.ndarray, k: int = 3) -> float:
        radii = np.sort(np_cdist(ref, ref), axis=1)[:, k]
        return float(np.mean([np.any(np.linalg.norm(ref - x, axis=1) <= radii) for x in q]))

    got = precision_recall(b, a, k=3)  # (samples, reference)
    ref = (coverage(B, A), coverage(A, B))
    assert (got.precision, got.recall) == ref, f"precision/recall {got} vs explicit loop {ref}"
    assert 0.0 < got.precision < 1.0 and 0.0 < got.recall < 1.0, got


def test_distances_bad_input() -> None:
    a = torch.randn(20, 3)
    with pytest.raises(ValueError, match="same shape"):
        mmd(a, torch.randn(20, 4))
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(a, torch.full((5, 3), float("nan")))
    with pytest.raises(ValueError, match="at least 2"):
        energy_distance(a, a[:1])
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd(a, a, bandwidth=-1.0)
    with pytest.raises(ValueError, match="kernel"):
        mmd(a, a, kernel="laplace")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_recall(a, a, k=0)
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(a, a, n_projections=0)


# ------------------------------------------------------------------------------------- FID / KID
def test_frechet_distance_closed_form_and_scipy() -> None:
    g = gen(6)
    mu_a, mu_b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    va, vb = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    exact = float(((mu_a - mu_b) ** 2).sum() + ((va.sqrt() - vb.sqrt()) ** 2).sum())
    got = frechet_distance(mu_a, torch.diag(va), mu_b, torch.diag(vb))
    assert abs(got - exact) < 1e-12, f"diagonal covariances: {got} vs closed form {exact}"
    # non-commuting covariances, one of them singular: against scipy.linalg.sqrtm of the product
    ma = torch.randn(5, 5, generator=g, dtype=torch.float64)
    mb = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ca, cb = ma @ ma.T, mb @ mb.T
    root = scipy.linalg.sqrtm(ca.numpy() @ cb.numpy())
    ref = float(((mu_a - mu_b) ** 2).sum() + torch.trace(ca) + torch.trace(cb)) - 2 * float(np.trace(root).real)
    got = frechet_distance(mu_a, ca, mu_b, cb)
    assert abs(got - ref) < 1e-8 * abs(ref), f"vs scipy sqrtm: {got} vs {ref}"


def test_fid_of_gaussian_samples_vs_closed_form() -> None:
    d = 4
    m = torch.tensor([0.5, 0.0, -0.5, 0.25], dtype=torch.float64)
    # N(0, I) vs N(m, s^2 I): FID = |m|^2 + d (1 - s)^2
    exact = float((m**2).sum()) + d * 0.5**2
    vals = [fid(*gaussians(4000, d, m, 1.5, 300 + r)) for r in range(10)]
    replicate_check(vals, exact, "FID of Gaussian samples")
    a, _ = gaussians(500, d, m, 1.5, 0)
    assert abs(fid(a, a)) < 1e-10


def u_mmd_loop(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with KID's kernel, by explicit loops over pairs (Binkowski et al. 2018, eq. 4)."""
    k = lambda x, y: (float(x @ y) / len(x) + 1.0) ** 3  # noqa: E731
    n, m = len(a), len(b)
    saa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sbb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return saa + sbb - 2 * sab


def test_kid_matches_loop_estimator_and_is_unbiased() -> None:
    g = gen(7)
    a = torch.randn(30, 6, generator=g, dtype=torch.float64)
    b = torch.randn(30, 6, generator=g, dtype=torch.float64) + 0.3
    mean, std = (r := kid(a, b, n_subsets=1, subset_size=30)).mean, r.std
    ref = u_mmd_loop(a.numpy(), b.numpy())
    assert abs(mean - ref) < 1e-10 and std == 0.0, f"kid {mean} vs loop estimator {ref}"
    # same distribution: the mean over independent replicates is 0 within 4 SE, while the biased
    # (V-statistic) estimator is visibly positive
    unbiased, biased = [], []
    for r in range(40):
        x = torch.randn(100, 8, generator=gen(1000 + r), dtype=torch.float64)
        y = torch.randn(100, 8, generator=gen(2000 + r), dtype=torch.float64)
        unbiased.append(kid(x, y, n_subsets=1, subset_size=100).mean)
        kxx = (x @ x.T / 8 + 1) ** 3
        kyy = (y @ y.T / 8 + 1) ** 3
        kxy = (x @ y.T / 8 + 1) ** 3
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    u, bi = torch.tensor(unbiased), torch.tensor(biased)
    se = float(u.std() / math.sqrt(len(u)))
    assert abs(float(u.mean())) < 4 * se, f"KID mean {float(u.mean()):.4g} +- {se:.3g}: biased?"
    assert float(bi.mean()) > 8 * se, f"V-statistic {float(bi.mean()):.4g} indistinguishable (SE {se:.3g})"
    # many subsets of one pair of large sets from the same distribution
    x = torch.randn(2000, 8, generator=gen(8), dtype=torch.float64)
    y = torch.randn(2000, 8, generator=gen(9), dtype=torch.float64)
    mean, std = (r := kid(x, y, n_subsets=50, subset_size=200, seed=1)).mean, r.std
    assert abs(mean) < 4 * std / math.sqrt(50), f"KID same distribution {mean:.4g} (std {std:.3g})"
    assert kid(x, y, n_subsets=3, subset_size=50, seed=4) == kid(x, y, n_subsets=3, subset_size=50, seed=4)


def gaussian_blur(x: torch.Tensor, s: float) -> torch.Tensor:
    r = torch.arange(-3, 4, dtype=x.dtype)
    w = torch.exp(-(r**2) / (2 * s * s))
    w = w / w.sum()
    pad = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
    out = torch.nn.functional.conv2d(pad, w.reshape(1, 1, 1, 7))
    return torch.nn.functional.conv2d(out, w.reshape(1, 1, 7, 1))


def test_fid_on_digits_features_grows_with_noise_and_blur() -> None:
    from scoredyn.data import load

    x = torch.cat([load("digits", split="train"), load("digits", split="test")])
    perm = torch.randperm(len(x), generator=gen(10))
    a, b = x[perm[: len(x) // 2]], x[perm[len(x) // 2 :]]
    fa = features(a, "digits")
    base = fid(fa, features(b, "digits"))
    noisy = [fid(fa, features(b + s * torch.randn(b.shape, generator=gen(11)), "digits")) for s in (0.25, 0.5, 1.0, 2.0)]
    blurred = [fid(fa, features(gaussian_blur(b, s), "digits")) for s in (0.5, 0.8, 1.2, 2.0)]
    assert base < 0.05 * noisy[-1], f"FID of two halves {base:.3f} vs noisiest {noisy[-1]:.3f}"
    for name, seq in (("noise", noisy), ("blur", blurred)):
        vals = [base] + seq
        assert all(u < v for u, v in zip(vals, vals[1:])), f"FID not increasing with {name}: {vals}"


# ---------------------------------------------------------------------------- unexplained variance
class IsoGauss:
    """Closed-form denoiser of ``N(0, v I)``: ``D = v x / (v + sigma^2)``."""

    def __init__(self, v: float) -> None:
        self.v = v

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return self.v * x / (self.v + s2)


def test_unexplained_variance_closed_form_and_limits() -> None:
    x0 = torch.randn(64, 2, 3, generator=gen(12), dtype=torch.float64)
    sigmas = [0.1, 0.5, 1.0, 4.0]
    ref, mod = IsoGauss(1.0), IsoGauss(2.5)
    got = unexplained_variance(ref, mod, x0, sigmas, n=100, batch_size=16)
    # scores -x/(a + s^2) and -x/(b + s^2) are proportional: the fraction is (1 - (a+s^2)/(b+s^2))^2
    exact = torch.tensor([(1 - (1 + s * s) / (2.5 + s * s)) ** 2 for s in sigmas], dtype=torch.float64)
    assert torch.allclose(got, exact, rtol=1e-10, atol=0), f"{got} vs closed form {exact}"
    assert torch.equal(unexplained_variance(ref, ref, x0, sigmas), torch.zeros(4, dtype=torch.float64))
    identity = lambda x, sigma: x  # noqa: E731  (zero score)
    ones = unexplained_variance(ref, identity, x0, sigmas)
    assert torch.allclose(ones, torch.ones(4, dtype=torch.float64), rtol=1e-14), ones
    a = unexplained_variance(ref, mod, x0, sigmas, n=50, batch_size=7, seed=3)
    b = unexplained_variance(ref, mod, x0, sigmas, n=50, batch_size=50, seed=3)
    assert torch.allclose(a, b, rtol=1e-13, atol=0), f"result depends on the batch size: {a} vs {b}"


def test_unexplained_variance_gaussian_explains_mixture_at_large_sigma() -> None:
    from scoredyn.analytic.gaussian import Gaussian
    from scoredyn.analytic.mixture import GaussianMixture

    means = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    w = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    var = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    gmm = GaussianMixture(w, means, var)
    mu = (w[:, None] * means).sum(0)
    centered = means - mu
    cov = (w[:, None, None] * (centered[:, :, None] * centered[:, None, :])).sum(0) + torch.diag((w * var).sum().repeat(2))
    gauss = Gaussian(mu, cov)
    x0 = gmm.sample(2000, generator=gen(13))
    sigmas = [0.2, 1.0, 3.0, 10.0, 30.0]
    fuv = unexplained_variance(gmm, gauss, x0, sigmas)
    vals = fuv.tolist()
    assert vals[0] > 0.3, f"at small sigma the Gaussian should miss the mixture's score: {vals}"
    assert all(u > v for u, v in zip(vals, vals[1:])), f"not decreasing with sigma: {vals}"
    assert vals[-1] < 1e-4, f"at sigma=30 the moment-matched Gaussian should explain the score: {vals}"


def test_unexplained_variance_bad_input() -> None:
    x0 = torch.randn(8, 3)
    ref = IsoGauss(1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        unexplained_variance(ref, ref, x0, [0.5, 0.0])
    with pytest.raises(ValueError, match="reference score is 0"):
        unexplained_variance(lambda x, s: x, ref, x0, [1.0])
    with pytest.raises(ValueError, match=r"model returned \(8, 2\); expected a tensor of shape \(8, 3\)"):
        unexplained_variance(ref, lambda x, s: x[:, :2], x0, [1.0])
    with pytest.raises(ValueError, match="NaN"):
        unexplained_variance(ref, lambda x, s: x * float("nan"), x0, [1.0])
    with pytest.raises(ValueError, match="n must be a positive integer"):
        unexplained_variance(ref, ref, x0, [1.0], n=0)


def test_copy_ratio_constant() -> None:
    assert COPY_RATIO == pytest.approx(1 / 3)
