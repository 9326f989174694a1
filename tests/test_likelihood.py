"""metrics.log_likelihood against closed forms: a Gaussian's exact log N(x; mu, Sigma + sigma_min^2 I)
and a 2-D Gaussian mixture whose noised density is integrated numerically."""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Gaussian, GaussianMixture
from scoredyn.metrics import log_likelihood

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def _gaussian(device, d=4, diagonal=False):
    g = torch.Generator().manual_seed(3)
    if diagonal:
        cov = torch.diag(torch.rand(d, generator=g, dtype=F64) * 2 + 0.2)
    else:
        a = torch.randn(d, d, generator=g, dtype=F64)
        cov = a @ a.T / d + 0.2 * torch.eye(d, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    return mu.to(device), cov.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_exact_trace_matches_closed_form(device):
    mu, cov = _gaussian(device)
    model = Gaussian(mu, cov)
    x = mu + torch.randn(6, 4, dtype=F64, device=device) * 1.5
    s_min, s_max = 0.05, 1e7
    res = log_likelihood(model, x, sigma_min=s_min, sigma_max=s_max, rtol=1e-7, atol=1e-7)
    exact = torch.distributions.MultivariateNormal(mu, cov + s_min**2 * torch.eye(4, dtype=F64, device=device)).log_prob(x)
    err = float((res.nats - exact).abs().max()) / 4
    assert err < 1e-5, f"log-likelihood error per dimension {err:.2e} nats (nfe {res.nfe})"
    bpd = -exact / (4 * math.log(2))
    assert torch.allclose(res.bits_per_dim, bpd, atol=1e-4), f"bits/dim {res.bits_per_dim} vs {bpd}"
    assert res.nfe > 0 and set(res.as_dict()) == {"nats", "bits_per_dim", "nfe"}


@pytest.mark.parametrize("device", DEVICES)
def test_hutchinson_is_exact_for_a_diagonal_jacobian_and_unbiased_otherwise(device):
    mu, cov = _gaussian(device, diagonal=True)
    x = mu + torch.randn(3, 4, dtype=F64, device=device)
    kw = dict(sigma_min=0.1, sigma_max=1e6, rtol=1e-5, atol=1e-5)
    exact = log_likelihood(Gaussian(mu, cov), x, **kw).nats
    # a diagonal Jacobian: v^T J v = tr J for every Rademacher v
    hutch = log_likelihood(Gaussian(mu, cov), x, trace="hutchinson", seeds=[1, 2, 3], **kw).nats
    err = float((hutch - exact).abs().max())
    assert err < 1e-5, f"Hutchinson on a diagonal Jacobian differs from exact by {err:.2e} nats"
    mu, cov = _gaussian(device)
    model = Gaussian(mu, cov)
    exact = log_likelihood(model, x, **kw).nats
    many = log_likelihood(model, x, trace="hutchinson", n_probes=16, seeds=[4, 5, 6], **kw).nats
    err = float((many - exact).abs().max())
    assert err < 0.3, f"Hutchinson (16 probes) vs exact: {err:.3f} nats"
    again = log_likelihood(model, x, trace="hutchinson", n_probes=16, seeds=[4, 5, 6], **kw).nats
    assert torch.equal(many, again), "seeded probes are not reproducible"


def test_mixture_matches_numerical_integral_of_its_density():
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-1.0, 0.5], [1.2, -0.4]], dtype=F64)
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.05], [-0.05, 0.4]]], dtype=F64)
    model = GaussianMixture(weights, means, covs)
    x = torch.tensor([[-1.0, 0.4], [0.1, 0.0], [1.5, -1.0]], dtype=F64)
    s_min = 0.2
    res = log_likelihood(model, x, sigma_min=s_min, sigma_max=1e7, rtol=1e-8, atol=1e-8)
    # p_sigma(x) = int p_0(y) N(x - y; 0, sigma^2 I) dy on a fine grid (midpoint rule)
    h = 0.01
    axis = torch.arange(-5.0, 5.0, h, dtype=F64) + h / 2
    yy = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    p0 = sum(w * torch.distributions.MultivariateNormal(m, c).log_prob(yy).exp() for w, m, c in zip(weights, means, covs))
    dens = torch.stack([(p0 * torch.exp(-((xi - yy) ** 2).sum(1) / (2 * s_min**2))).sum() * h * h / (2 * math.pi * s_min**2) for xi in x])
    err = float((res.nats - dens.log()).abs().max())
    assert err < 1e-4, f"mixture log-likelihood vs quadrature: max error {err:.2e} nats over 2 dims (nfe {res.nfe})"


def test_bin_width_and_bad_input():
    mu, cov = _gaussian("cpu")
    x = mu + torch.randn(2, 4, dtype=F64)
    res = log_likelihood(Gaussian(mu, cov), x, sigma_min=0.1, sigma_max=100.0, bin_width=2 / 255)
    want = -(res.nats + 4 * math.log(2 / 255)) / (4 * math.log(2))
    assert torch.allclose(res.bits_per_dim, want)
    with pytest.raises(ValueError, match="below"):
        log_likelihood(Gaussian(mu, cov), x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(Gaussian(mu, cov), x, sigma_min=0.1, sigma_max=5.0, trace="skilling")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(Gaussian(mu, cov), x, sigma_min=0.1, sigma_max=5.0, trace="hutchinson", n_probes=0)


def test_a_constant_denoiser_is_the_prior_convolved():
    """D = 0 everywhere is the data distribution delta(0): p_sigma_min = N(0, sigma_min^2 I) exactly."""
    x = torch.randn(3, 2, dtype=F64)
    res = log_likelihood(lambda y, s: torch.zeros_like(y), x, sigma_min=0.3, sigma_max=50.0, rtol=1e-8, atol=1e-8)
    exact = torch.distributions.Normal(0.0, 0.3).log_prob(x).sum(1)
    err = float((res.nats - exact).abs().max())
    assert err < 1e-5, f"delta at 0: log-likelihood error {err:.2e} nats (ODE tolerance 1e-8 over a latent of norm ~200)"


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fitted_gaussian_small_sigma_min_loose_tolerance_is_finite_and_exact(dtype):
    """Regression: a fitted Gaussian's field x - D(x), d - tr(dD/dx) is O(sigma_min^2), so dopri5's
    initial-step probe used to land past log sigma_max and evaluate D at sigma = inf ("sigma contains NaN/Inf").
    The probe is now kept inside [sigma_min, sigma_max]; the answer matches the closed form."""
    from scoredyn import data

    train = data.load("moons", n=400).to(dtype)
    model = Gaussian.fit(train)
    x = train[:8]
    cov = (model.eigvecs * model.eigvals) @ model.eigvecs.T + 0.002**2 * torch.eye(2, dtype=dtype)
    exact = torch.distributions.MultivariateNormal(model.mean.double(), cov.double()).log_prob(x.double())
    for rtol, tol in ((1e-3, 0.05), (1e-6, 1e-4)):  # measured: 0.024 (float32) at rtol 1e-3
        res = log_likelihood(model, x, sigma_min=0.002, sigma_max=1e5, rtol=rtol, atol=rtol)
        err = float((res.nats - exact).abs().max()) / 2
        assert torch.isfinite(res.nats).all() and err < tol, f"rtol {rtol}: error {err:.2e} nats/dim (nfe {res.nfe})"
