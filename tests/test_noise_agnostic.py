"""Noise-agnostic optima (DESIGN.md §3) against closed forms, brute force, autograd and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammainc, gammaincc, gammaln

from scoredyn.analytic import NoiseAgnostic
from scoredyn.analytic.noise_agnostic import EXPONENTS


def log_sigma_integral(n: int, q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``log int_lo^hi sigma^-n exp(-q / (2 sigma^2)) dsigma`` in closed form (derived).

    With ``u = q / (2 sigma^2)``: ``= 2^((n-3)/2) q^((1-n)/2) Gamma(s) [P(s, q/2lo^2) - P(s, q/2hi^2)]``,
    ``s = (n - 1)/2``, P the regularised lower incomplete gamma function.
    """
    s = (n - 1) / 2
    zero = q == 0  # a query on a training point: int sigma^-n dsigma
    q = np.where(zero, 1.0, q)
    u_hi, u_lo = q / (2 * lo * lo), q / (2 * hi * hi)
    diff = np.where(gammainc(s, u_lo) < 0.5, gammainc(s, u_hi) - gammainc(s, u_lo), gammaincc(s, u_lo) - gammaincc(s, u_hi))
    with np.errstate(divide="ignore"):
        out = (n - 3) / 2 * math.log(2) + (1 - n) / 2 * np.log(q) + gammaln(s) + np.log(diff)
    at_zero = (1 - n) * math.log(lo) + math.log1p(-((lo / hi) ** (n - 1))) - math.log(n - 1)
    return np.where(zero, at_zero, out)


def kim_oracle(data: np.ndarray, x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Kim's ``f* = int grad p_sigma dsigma / int p_sigma / sigma dsigma`` and ``log(int p_sigma dsigma)``.

    Per training point: ``int grad N dsigma = (x_i - x) (2 pi)^(-d/2) I_{d+2}``, ``int N / sigma = (2 pi)^(-d/2) I_{d+1}``,
    ``int N = (2 pi)^(-d/2) I_d``, with ``I_n`` from :func:`log_sigma_integral`.
    """
    n, d = data.shape
    q = ((x[:, None, :] - data[None]) ** 2).sum(-1)
    li = {k: log_sigma_integral(d + k, q, lo, hi) for k in (0, 1, 2)}
    w = np.exp(li[2] - li[2].max(1, keepdims=True))
    den = np.exp(li[1] - li[2].max(1, keepdims=True)).sum(1)
    f = (w[:, :, None] * (data[None] - x[:, None, :])).sum(1) / den[:, None]
    m = li[0].max(1, keepdims=True)
    log_l = m[:, 0] + np.log(np.exp(li[0] - m).sum(1)) - d / 2 * math.log(2 * math.pi) - math.log(n)
    return f, log_l


def brute_levels(data: torch.Tensor, x: torch.Tensor, levels: torch.Tensor, conditioning: str) -> torch.Tensor:
    """float64 double sum over (level, point) of DESIGN.md §3's f* with uniform pi_k."""
    d = data.shape[1]
    lam_c = {"multiplicative": (lambda s: s**2, lambda s: 1 / s), "unconditional": (lambda s: s**2, lambda s: torch.ones_like(s))}
    lam, c = lam_c[conditioning]
    s = levels.double()[:, None, None]  # (K, 1, 1)
    r2 = ((x[:, None, :] - data[None]) ** 2).sum(-1)[None]  # (1, B, N)
    log_n = -r2 / (2 * s**2) - d * torch.log(s) - d / 2 * math.log(2 * math.pi)
    log_n = log_n - log_n.amax((0, 2), keepdim=True)  # a common factor per query: far queries do not underflow
    num_w = torch.exp(log_n) * (lam(s) * c(s) / s**2)  # grad p_k = sum_i N (x_i - x) / s^2
    den_w = torch.exp(log_n) * lam(s) * c(s) ** 2
    num = torch.einsum("kbn,bnd->bd", num_w, data[None] - x[:, None, :])
    return num / den_w.sum((0, 2))[:, None]


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(1), torch.as_tensor(b).double().flatten(1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(15, 3, generator=g, dtype=torch.float64)
    x = torch.cat([data[:3] + 0.05 * torch.randn(3, 3, generator=g, dtype=torch.float64),
                   torch.randn(4, 3, generator=g, dtype=torch.float64) * 2, data[3:4]])
    return data, x


def test_multiplicative_against_incomplete_gamma_closed_form(small):
    data, x = small
    lo, hi = 0.05, 3.0
    model = NoiseAgnostic(data, sigma_min=lo, sigma_max=hi)
    f_ref, logl_ref = kim_oracle(data.numpy(), x.numpy(), lo, hi)
    err = rel_err(model.field(x), f_ref)
    assert err < 1e-9, f"f* relative error {err:.2e} vs the incomplete-gamma closed form"
    # log_lyapunov is log E_sigma[sigma p_sigma] = log(int p_sigma dsigma / log(hi/lo))
    lerr = float((model.log_lyapunov(x).numpy() + math.log(math.log(hi / lo)) - logl_ref).__abs__().max())
    assert lerr < 1e-9, f"log L error {lerr:.2e}"
    # float32: ~1e-5 relative (measured 1e-5); on a training point f* is tiny (2e-4 here) and its
    # float32 error is absolute, ~eps |x| (the cancellation in sum w_i x_i - x)
    f32 = NoiseAgnostic(data.float(), sigma_min=lo, sigma_max=hi).field(x.float())
    e32 = rel_err(f32[:-1], f_ref[:-1])
    assert e32 < 1e-4, f"float32 f* relative error {e32:.2e}"
    a32 = float((f32[-1].double() - torch.tensor(f_ref[-1])).norm()) / float(np.linalg.norm(f_ref, axis=1).max())
    assert a32 < 1e-5, f"float32 f* error on a training point {a32:.2e} of the batch scale"


@pytest.mark.parametrize("d", [2, 10, 784])
def test_quadrature_per_point_against_closed_form(d):
    """The per-point sigma-integrals ``F_a(q)`` to 1e-6 relative (measured ~1e-10) for q <= 4 (d+a) sigma_max^2."""
    lo, hi = 0.01, 50.0
    for conditioning in EXPONENTS:
        model = NoiseAgnostic(torch.zeros(1, d, dtype=torch.float64), sigma_min=lo, sigma_max=hi, conditioning=conditioning)
        for terms in (model.field_terms, model.lyapunov_terms):
            a = terms.alpha
            if d + a + 1 <= 1:  # the closed form needs s = (d + a) / 2 > 0
                continue
            q = np.exp(np.linspace(math.log(1e-6 * lo**2), math.log(4 * (d + a) * hi**2), 400))
            ell, _ = terms(torch.tensor(q)[None])
            ref = log_sigma_integral(d + a + 1, q, lo, hi) - math.log(math.log(hi / lo))
            ok = np.isfinite(ref)  # scipy's P underflows for large d far below the range
            assert ok.mean() > 0.5
            err = float(np.abs(ell[0].numpy() - ref)[ok].max())
            assert err < 1e-6, f"d={d} {conditioning} a={a}: log F error {err:.2e} (n_quad={model.n_quad})"


def test_monte_carlo_least_squares_1d():
    """Fit f on hat functions by least squares on the DSM target ``E |f(x0 + s z) + z|^2`` (Kim, c = 1/s, lambda = s^2)."""
    data = torch.tensor([[-1.0], [0.5], [1.2]], dtype=torch.float64)
    lo, hi = 0.2, 2.0
    rng = np.random.default_rng(0)
    n = 1_500_000
    s = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    z = rng.standard_normal(n)
    xs = data.numpy()[rng.integers(0, 3, n), 0] + s * z
    knots = np.linspace(-2.0, 2.5, 46)
    h = knots[1] - knots[0]
    pos = np.clip((xs - knots[0]) / h, 0, len(knots) - 1 - 1e-9)
    i0 = pos.astype(int)
    fr = pos - i0
    keep = (xs > knots[0]) & (xs < knots[-1])
    i0, fr, target = i0[keep], fr[keep], -z[keep]
    ata = np.zeros((len(knots), len(knots)))
    atb = np.zeros(len(knots))
    for ia, wa in ((i0, 1 - fr), (i0 + 1, fr)):
        np.add.at(atb, ia, wa * target)
        for ib, wb in ((i0, 1 - fr), (i0 + 1, fr)):
            np.add.at(ata, (ia, ib), wa * wb)
    fit = np.linalg.solve(ata, atb)
    exact = NoiseAgnostic(data, sigma_min=lo, sigma_max=hi).field(torch.tensor(knots)[:, None])[:, 0].numpy()
    inner = slice(3, -3)
    err = float(np.abs(fit[inner] - exact[inner]).max())
    assert err < 0.06, f"Monte-Carlo least-squares fit differs from f* by {err:.3f} (max |f*| {np.abs(exact).max():.2f})"
    # a wrong conditioning (e.g. the unconditional optimum) is far off
    other = NoiseAgnostic(data, sigma_min=lo, sigma_max=hi, conditioning="unconditional").field(torch.tensor(knots)[:, None])[:, 0].numpy()
    assert np.abs(fit[inner] - other[inner]).max() > 5 * err


@pytest.mark.parametrize("geometric", [True, False])
def test_unconditional_is_grad_log_p_mn(small, geometric):
    data, x = small
    levels = torch.exp(torch.linspace(math.log(0.05), math.log(3.0), 8, dtype=torch.float64))
    if not geometric:
        levels = torch.tensor([0.05, 0.07, 0.3, 0.31, 1.0, 3.0], dtype=torch.float64)
    model = NoiseAgnostic(data, conditioning="unconditional", levels=levels)
    xr = x.clone().requires_grad_(True)
    d = data.shape[1]
    s = levels[:, None, None]
    r2 = ((xr[:, None, :] - data[None]) ** 2).sum(-1)[None]
    log_terms = 2 * torch.log(s) - r2 / (2 * s**2) - d * torch.log(s)  # (K, B, N): log sigma_k^2 N(x; x_i, sigma_k^2) + c
    log_p = torch.logsumexp(log_terms.permute(1, 0, 2).reshape(x.shape[0], -1), 1)
    (grad,) = torch.autograd.grad(log_p.sum(), xr)
    err = rel_err(model.score(x, 0.7), grad)
    assert err < 1e-10, f"unconditional score vs autograd of log p_MN: {err:.2e}"
    assert rel_err(model.field(x), grad) < 1e-10
    assert rel_err(model(x, 0.7), x + 0.49 * grad) < 1e-10
    # log_lyapunov is log p_MN normalised: differences match the autograd log density
    ll = model.log_lyapunov(x)
    diff = (ll - ll[0]) - (log_p - log_p[0]).detach()
    assert float(diff.abs().max()) < 1e-10


def test_discrete_levels_against_brute_force_with_pruning():
    g = torch.Generator().manual_seed(3)
    d = 200
    data = torch.randn(40, d, generator=g, dtype=torch.float64) * 0.3
    x = torch.cat([data[:3] + 0.01 * torch.randn(3, d, generator=g, dtype=torch.float64),
                   data[3:6] + 0.5 * torch.randn(3, d, generator=g, dtype=torch.float64),
                   torch.randn(2, d, generator=g, dtype=torch.float64) * 3])
    levels = torch.exp(torch.linspace(math.log(0.005), math.log(5.0), 64, dtype=torch.float64))
    for cond in EXPONENTS:
        model = NoiseAgnostic(data, conditioning=cond, levels=levels)
        assert model.field_terms.nodes_per_point < 64, "expected level pruning at d=200"
        assert model.window_bound <= 1e-9
        err = rel_err(model.field(x), brute_levels(data, x, levels, cond))
        assert err < 1e-8, f"{cond}: pruned f* vs brute force {err:.2e} (window {model.field_terms.nodes_per_point} levels)"
    # non-geometric levels take the unpruned path
    odd = torch.tensor([0.01, 0.02, 0.5, 0.6, 4.0], dtype=torch.float64)
    model = NoiseAgnostic(data, levels=odd)
    assert model.field_terms.full
    err = rel_err(model.field(x), brute_levels(data, x, odd, "multiplicative"))
    assert err < 1e-10, f"non-geometric levels vs brute force {err:.2e}"


def test_pruned_continuous_equals_unpruned():
    g = torch.Generator().manual_seed(4)
    d = 100
    data = torch.randn(30, d, generator=g, dtype=torch.float64)
    x = torch.cat([data[:2], data[2:5] + 0.3 * torch.randn(3, d, generator=g, dtype=torch.float64),
                   20 * torch.randn(2, d, generator=g, dtype=torch.float64)])
    model = NoiseAgnostic(data, sigma_min=0.01, sigma_max=2.0)
    assert not model.field_terms.full
    pruned, logl = model.field(x), model.log_lyapunov(x)
    for t in (model.field_terms, model.lyapunov_terms):
        t.full = True
    err = rel_err(pruned, model.field(x))
    lerr = float((logl - model.log_lyapunov(x)).abs().max())
    assert err < 1e-8 and lerr < 1e-8, f"pruning changed f* by {err:.2e}, log L by {lerr:.2e}"


def test_lyapunov_non_decreasing_along_flow(small):
    data, _ = small
    model = NoiseAgnostic(data, sigma_min=0.1, sigma_max=2.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64) * 1.5
    prev = start = model.log_lyapunov(x)
    h = 2e-3
    for _ in range(100):
        x = x + h * model.field(x)
        cur = model.log_lyapunov(x)
        assert bool((cur >= prev - 1e-12).all()), f"log L decreased by {float((prev - cur).max()):.2e}"
        prev = cur
    gain = prev - start
    assert bool((gain > 1e-3).all()), f"log L barely moved along the flow: {gain}"


def test_conditioning_relations_and_shapes():
    g = torch.Generator().manual_seed(6)
    data = torch.rand(20, 1, 2, 2, generator=g, dtype=torch.float64)
    x = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.1, 0.2, 0.5, 1.0], dtype=torch.float64)
    m = NoiseAgnostic(data, sigma_min=0.05, sigma_max=2.0)
    f = m.field(x)
    assert f.shape == x.shape
    assert rel_err(m(x, sig), x + sig[:, None, None, None] * f) < 1e-14
    assert rel_err(m.score(x, sig), f / sig[:, None, None, None]) < 1e-14
    u = NoiseAgnostic(data, sigma_min=0.05, sigma_max=2.0, conditioning="unconditional")
    assert rel_err(u(x, sig), x + sig[:, None, None, None] ** 2 * u.field(x)) < 1e-14
    assert m.log_lyapunov(x).shape == (4,)


def test_far_and_exact_queries_finite_float32():
    g = torch.Generator().manual_seed(7)
    data = torch.rand(100, 16, generator=g) * 2 - 1
    data = torch.cat([data, data[:5]])
    x = torch.cat([data[:3], torch.full((2, 16), 1e3)])
    for kw in ({"sigma_min": 0.01, "sigma_max": 5.0}, {"levels": torch.exp(torch.linspace(math.log(0.01), math.log(5.0), 20))}):
        m = NoiseAgnostic(data, **kw)
        assert torch.isfinite(m.field(x)).all() and torch.isfinite(m.log_lyapunov(x)).all()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((1.0, 1.0), {}, r"sigma_min \(1\) must be below sigma_max \(1\)"),
        ((2.0, 1.0), {}, r"sigma_min \(2\) must be below sigma_max \(1\)"),
        ((0.0, 1.0), {}, "sigma_min"),
        ((-1.0, 1.0), {}, "sigma_min"),
        ((0.1, math.inf), {}, "sigma_max"),
        ((0.1, 1.0), {"conditioning": "edm"}, "conditioning"),
        ((), {}, "required"),
        ((), {"levels": torch.tensor([])}, "levels"),
        ((), {"levels": torch.tensor([0.1, -1.0])}, "levels"),
        ((), {"levels": torch.tensor([0.1, math.nan])}, "levels"),
        ((), {"levels": torch.ones(2, 2)}, "levels"),
        ((), {"levels": "fine"}, "levels"),
        ((0.5, 1.0), {"levels": torch.tensor([0.1, 1.0])}, "bracket"),
        ((None, None), {"levels": torch.tensor([0.1, 1.0]), "n_quad": 16}, "n_quad"),
        ((0.1, 1.0), {"n_quad": 0}, "n_quad"),
        ((0.1, 1.0), {"chunk_size": -3}, "chunk_size"),
    ],
)
def test_bad_construction(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseAgnostic(torch.randn(5, 2), **dict(zip(("sigma_min", "sigma_max"), args)), **kwargs)


@pytest.mark.parametrize(
    "data, call, match",
    [
        (torch.zeros(0, 2), None, "at least 1"),
        (torch.tensor([[math.inf, 0.0]]), None, "NaN/Inf"),
        (torch.randn(5, 2), lambda m: m.field(torch.zeros(3, 3)), "shape"),
        (torch.randn(5, 2), lambda m: m(torch.zeros(3, 2), 0.0), "> 0"),
        (torch.randn(5, 2), lambda m: m.score(torch.full((1, 2), math.nan), 1.0), "NaN"),
        (torch.randn(5, 2), lambda m: m.log_lyapunov(torch.zeros(2, 2, 1)), "shape"),
    ],
)
def test_bad_input(data, call, match):
    with pytest.raises(ValueError, match=match):
        m = NoiseAgnostic(data, sigma_min=0.1, sigma_max=1.0)
        call(m)


def _count_fused(model: NoiseAgnostic) -> dict:
    """Wrap both level sums' :meth:`plan` to count the chunks it served and those it declined."""
    seen = {"fused": 0, "declined": 0}
    for terms in (model.field_terms, model.lyapunov_terms):
        inner = terms.plan

        def counted(qmin, shift, inner=inner):
            out = inner(qmin, shift)
            seen["declined" if out is None else "fused"] += 1
            return out

        terms.plan = counted
    return seen


def _rel_rows(a, b) -> torch.Tensor:
    a, b = torch.as_tensor(a).double().flatten(1), torch.as_tensor(b).double().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


@pytest.mark.parametrize("cond", sorted(EXPONENTS))
def test_per_query_level_windows_against_float64_brute_force(cond):
    """The fused per-query window path (:meth:`_LogF.plan`, :meth:`_LogF.dense_weights`; 64 geometric levels, d = 100, 5 chunks)
    against the float64 double sum over (level, point), for queries on, near (0.01), between (0.7) and far
    (norm 30 and 3000, beyond ``sigma_max sqrt(d) = 200``) from the training points, f* and log L.
    Measured: float64 f* within 5.2e-12 / 1.1e-11 (tolerance 1e-8, as the per-entry path's test), log L
    within 5.5e-10 (the per-entry path's error too: the level window's bound, 6e-10).
    float32 (off the training points): 1.3e-3 (multiplicative) / 2.8e-3 (unconditional) near the points,
    from the float32 distances ``|x|^2 + |x_i|^2 - 2 x . x_i`` that both paths share (the per-entry path has
    the same error there, to 0.1%), at most 2e-6 elsewhere; the fused path stays within 1% + 1e-6 of the per-entry path's
    error for every query."""
    g = torch.Generator().manual_seed(12)
    d = 100
    data = torch.randn(300, d, generator=g, dtype=torch.float64)
    x = torch.cat([data[:2], data[2:6] + 0.01 * torch.randn(4, d, generator=g, dtype=torch.float64),
                   data[6:10] + 0.7 * torch.randn(4, d, generator=g, dtype=torch.float64),
                   torch.randn(3, d, generator=g, dtype=torch.float64) * 3, torch.randn(3, d, generator=g, dtype=torch.float64) * 300])
    levels = torch.exp(torch.linspace(math.log(0.01), math.log(20.0), 64, dtype=torch.float64))
    ref = brute_levels(data, x, levels, cond)
    model = NoiseAgnostic(data, conditioning=cond, levels=levels, chunk_size=64)
    seen = _count_fused(model)
    err = rel_err(model.field(x), ref)
    assert seen == {"fused": 5, "declined": 0}, f"expected the fused path on all 5 chunks: {seen}"
    assert err < 1e-8, f"{cond}: fused f* vs float64 brute force {err:.2e}"
    ll = model.log_lyapunov(x)
    assert seen == {"fused": 10, "declined": 0}, f"expected the fused path for log L too: {seen}"
    lyap = EXPONENTS[cond][2]
    r2 = ((x[:, None, :] - data[None]) ** 2).sum(-1)
    s = levels[:, None, None]
    log_terms = math.log(1 / 64) - (d + lyap) * torch.log(s) - r2[None] / (2 * s**2)
    ll_ref = torch.logsumexp(log_terms.reshape(-1, x.shape[0], 300).permute(1, 0, 2).reshape(x.shape[0], -1), 1)
    ll_ref = ll_ref - d / 2 * math.log(2 * math.pi) - math.log(300)
    lerr = float((ll - ll_ref).abs().max())
    assert lerr < 1e-8, f"{cond}: fused log L vs float64 brute force {lerr:.2e}"
    # float32: as accurate as the per-entry path, query by query (off the training points: f* ~ 0 there)
    m32 = NoiseAgnostic(data.float(), conditioning=cond, levels=levels, chunk_size=64)
    fused = _rel_rows(m32.field(x.float()), ref)[2:]
    for t in (m32.field_terms, m32.lyapunov_terms):
        t.plan = lambda qmin, shift: None
    per_entry = _rel_rows(m32.field(x.float()), ref)[2:]
    assert float(fused[4:].max()) < 1e-5, f"{cond} float32 fused, away from the points: {fused[4:].max():.2e}"
    assert bool((fused <= 1.01 * per_entry + 1e-6).all()), f"{cond} float32: fused {fused.tolist()} vs per-entry {per_entry.tolist()}"


@pytest.mark.parametrize("cond", sorted(EXPONENTS))
def test_sparse_level_windows_against_float64_brute_force(cond):
    """Batch of 80 (the CPU's sparse default): 60 tight clusters of 10 points (d = 64); 77 queries near cluster
    members, one between clusters and two far away (norms 30 and 3000). The second product runs over the entries
    nearer than the plan's ``q_thr`` alone, their weights computed for them only. Measured (float64):
    f* within 1.5e-11 / 3.0e-11 (multiplicative / unconditional) of the double sum over (level, point)
    (tolerance 1e-8), log L within 2.4e-11 of the per-entry path, 97.3% of the pairs left out with a
    reported mass bound of 2.1e-20 / 7.5e-21."""
    from scoredyn.analytic._stream import skip_report

    g = torch.Generator().manual_seed(13)
    d = 64
    centres = torch.randn(60, 1, d, generator=g, dtype=torch.float64) * 3
    data = (centres + 0.05 * torch.randn(60, 10, d, generator=g, dtype=torch.float64)).reshape(600, d)
    # near queries by members of the first chunk's clusters: the first chunk's nearest points are then the
    # global ones (a chunk past the first that is dense makes the rest dense); a query whose every weight
    # matters (far away) fills its row: three keep each chunk under 1/16 live
    idx = torch.arange(78) * 7 % 150
    x = torch.cat([data[idx[:77]] + 0.02 * torch.randn(77, d, generator=g, dtype=torch.float64),
                   data[idx[77:]] + 1.0 * torch.randn(1, d, generator=g, dtype=torch.float64),
                   torch.randn(1, d, generator=g, dtype=torch.float64) * 30 / math.sqrt(d),
                   torch.randn(1, d, generator=g, dtype=torch.float64) * 3000 / math.sqrt(d)])
    levels = torch.exp(torch.linspace(math.log(0.01), math.log(20.0), 64, dtype=torch.float64))
    model = NoiseAgnostic(data, conditioning=cond, levels=levels, chunk_size=150)
    seen = _count_fused(model)
    with skip_report() as rep:
        f = model.field(x)
    assert seen == {"fused": 4, "declined": 0}, f"expected the level-window plan on all 4 chunks: {seen}"
    assert rep.skipped > 0.9 * rep.pairs and rep.dense == 0, f"expected the sparse product: {rep}"
    assert rep.mass < 1e-15, f"skipped mass bound {rep.mass:.2e}"
    err = rel_err(f, brute_levels(data, x, levels, cond))
    assert err < 1e-8, f"{cond}: sparse level windows vs float64 brute force {err:.2e} ({rep})"
    dense = NoiseAgnostic(data, conditioning=cond, levels=levels, chunk_size=150)
    for t in (dense.field_terms, dense.lyapunov_terms):
        t.plan = lambda qmin, shift: None
    ll, ll_entry = model.log_lyapunov(x), dense.log_lyapunov(x)
    lerr = float((ll - ll_entry).abs().max())
    assert lerr < 1e-8, f"{cond}: sparse log L vs the per-entry path {lerr:.2e}"


def _near_data_case(offset: float = 0.0):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2500, 784, generator=g) * 2 - 1 + offset  # two chunks of the default 2048 rows
    q = x[:80] + 1e-3 * torch.randn(80, 784, generator=g)
    return x, q, torch.tensor(np.geomspace(0.002, 80, 64))


def test_level_windows_in_float32_are_as_accurate_near_data_as_the_per_entry_path():
    # the largest weight of a plan rounds to 1 +- k eps; left so, x_i - x lost eps |x_i| / sigma_min
    # (measured before the fix: 2.3e-5 near data and 2.9e-5 in a batch vs 1.5e-7 alone; after: 1.5e-7)
    x, q, levels = _near_data_case()
    want = NoiseAgnostic(x.double(), levels=levels).field(q.double())
    na = NoiseAgnostic(x, levels=levels)
    batch = na.field(q)
    alone = torch.cat([na.field(q[i : i + 1]) for i in range(0, 80, 7)])
    err = float((batch.double() - want).abs().max())
    assert err < 1e-6, f"float32 field near the data off by {err:.3g} (field size {float(want.abs().max()):.3g})"
    gap = float((batch[::7] - alone).abs().max())
    assert gap < 1e-6, f"a query alone and in a batch of 80 differ by {gap:.3g}"


def test_level_windows_on_uncentred_float32_data_stay_finite():
    # rounding made |x - x_i|^2 slightly negative, which the plan's exp2 overflowed (NaN/Inf error before the fix)
    import numpy as np

    x = torch.rand(3000, 64, generator=torch.Generator().manual_seed(1)) + 30.0
    f = NoiseAgnostic(x, levels=torch.tensor(np.geomspace(0.01, 50, 64))).field(x[:128])
    assert bool(torch.isfinite(f).all())
