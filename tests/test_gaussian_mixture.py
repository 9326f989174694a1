"""Gaussian and GaussianMixture denoisers against autograd of their log densities, dense-matrix
formulas and a tight adaptive solve of the probability-flow ODE (float64 oracles)."""

import math

import pytest
import torch
from torchdiffeq import odeint

from scoredyn.analytic.gaussian import Gaussian
from scoredyn.analytic.mixture import GaussianMixture

D64 = torch.float64


def _random_spd(d: int, gen: torch.Generator, k: int = 1) -> torch.Tensor:
    a = torch.randn(k, d, d, generator=gen, dtype=D64)
    return a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=D64)


def _mixtures() -> dict[str, GaussianMixture]:
    g = torch.Generator().manual_seed(0)
    k, d = 3, 4
    w = torch.tensor([0.5, 0.3, 0.2], dtype=D64)
    mu = 2 * torch.randn(k, d, generator=g, dtype=D64)
    data = torch.cat([mu[i] + 0.3 * torch.randn(40, d, generator=g, dtype=D64) for i in range(k)])
    return {
        "full": GaussianMixture(w, mu, _random_spd(d, g, k)),
        "diag": GaussianMixture(w, mu, 0.2 + torch.rand(k, d, generator=g, dtype=D64)),
        "iso": GaussianMixture(w, mu, torch.tensor([0.1, 0.5, 1.0], dtype=D64)),
        "fit_lowrank": GaussianMixture.fit(data, 3, seed=0, rank=2),
        "fit_full": GaussianMixture.fit(data, 3, seed=0),
    }


@pytest.mark.parametrize("kind", ["full", "diag", "iso", "fit_lowrank", "fit_full"])
@pytest.mark.parametrize("sigma", [1e-3, 0.3, 5.0])
def test_mixture_score_equals_autograd_of_log_prob(kind: str, sigma: float) -> None:
    gmm = _mixtures()[kind]
    x = (3 * torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=D64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
    score = gmm.score(x.detach(), sigma)
    err = float(((score - grad).norm() / grad.norm()))
    assert err < 1e-9, f"{kind} sigma={sigma}: relative error of score vs autograd {err:.2e}"
    den = gmm(x.detach(), sigma)
    assert torch.allclose(den, x.detach() + sigma**2 * score, rtol=1e-10, atol=1e-12)


def test_mixture_log_prob_matches_dense_formula() -> None:
    gmm = _mixtures()["fit_lowrank"]
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=D64)
    sigma = 0.7
    cov = gmm.covariance() + sigma**2 * torch.eye(4, dtype=D64)
    comps = torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=cov)
    ref = torch.logsumexp(comps.log_prob(x[:, None, :]) + gmm.log_weights, dim=1)
    got = gmm.log_prob(x, sigma)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10), f"max diff {float((got - ref).abs().max()):.2e}"


def test_mixture_sample_moments() -> None:
    gmm = _mixtures()["full"]
    x = gmm.sample(200_000, sigma=0.5, generator=torch.Generator().manual_seed(3))
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert float((x.mean(0) - mean).abs().max()) < 0.03
    within = (gmm.weights[:, None, None] * (gmm.covariance() + 0.25 * torch.eye(4, dtype=D64))).sum(0)
    between = (gmm.weights[:, None, None] * torch.einsum("ki,kj->kij", gmm.means - mean, gmm.means - mean)).sum(0)
    emp = torch.cov(x.T)
    rel = float((emp - within - between).norm() / (within + between).norm())
    assert rel < 0.02, f"sample covariance relative error {rel:.3f}"


def test_mixture_sample_depends_on_generator_only() -> None:
    gmm = _mixtures()["diag"]
    a = gmm.sample(10, generator=torch.Generator().manual_seed(5))
    b = gmm.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_fit_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(4)
    centers = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]], dtype=D64)
    data = torch.cat([c + 0.2 * torch.randn(300, 2, generator=g, dtype=D64) for c in centers])
    gmm = GaussianMixture.fit(data, 3, seed=0)
    found = gmm.means[torch.cdist(centers, gmm.means).argmin(1)]
    assert float((found - centers).abs().max()) < 0.05
    assert torch.allclose(gmm.weights, torch.full((3,), 1 / 3, dtype=D64), atol=1e-9)


def test_mixture_image_shaped_and_float32() -> None:
    means = torch.randn(2, 1, 3, 3)
    gmm = GaussianMixture(torch.tensor([0.5, 0.5]), means, torch.tensor([0.2, 0.3]))
    x = torch.randn(5, 1, 3, 3)
    out = gmm(x, torch.full((5,), 0.4))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    far = gmm(1e4 * torch.ones(2, 1, 3, 3), 1e-3)
    assert torch.isfinite(far).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([1.0]), torch.zeros(1, 2), torch.zeros(1, 3)), "covs has shape"),
        ((torch.tensor([1.0, 1.0]), torch.zeros(1, 2), torch.ones(1)), "weights has shape"),
        ((torch.tensor([-1.0]), torch.zeros(1, 2), torch.ones(1)), "non-negative"),
        ((torch.tensor([1.0]), torch.zeros(1, 2), -torch.ones(1)), "must be > 0"),
        ((torch.tensor([1.0]), torch.full((1, 2), float("nan")), torch.ones(1)), "NaN"),
        ((torch.tensor([1.0]), torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])), "positive semi-definite"),
    ],
)
def test_mixture_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_mixture_bad_queries() -> None:
    gmm = _mixtures()["iso"]
    with pytest.raises(ValueError, match="expected \\(B, 4\\)"):
        gmm(torch.zeros(3, 5, dtype=D64), 1.0)
    with pytest.raises(ValueError, match="> 0"):
        gmm(torch.zeros(3, 4, dtype=D64), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        gmm(torch.full((3, 4), float("nan"), dtype=D64), 1.0)
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture.fit(torch.randn(5, 2), 6)


# ---------------------------------------------------------------------------------- Gaussian
def _gaussian(rank: int | None = None) -> tuple[Gaussian, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    d = 6
    a = torch.randn(d, d, generator=g, dtype=D64)
    data = torch.randn(500, d, generator=g, dtype=D64) @ a + 1.5
    return Gaussian.fit(data, rank=rank), data


@pytest.mark.parametrize("rank", [None, 3])
def test_gaussian_denoiser_matches_dense_formula(rank: int | None) -> None:
    gauss, data = _gaussian(rank)
    mu = data.mean(0)
    lam, u = torch.linalg.eigh(torch.cov(data.T))
    if rank:
        lam, u = lam[-rank:], u[:, -rank:]
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(8), dtype=D64) * 3
    for sigma in (1e-2, 1.0, 20.0):
        ref = mu + ((x - mu) @ u * (lam / (lam + sigma**2))) @ u.T
        err = float((gauss(x, sigma) - ref).abs().max())
        assert err < 1e-10, f"rank={rank} sigma={sigma}: max deviation from U diag(lam/(lam+s^2)) U^T = {err:.2e}"


@pytest.mark.parametrize("rank", [None, 3])
def test_teleport_matches_tight_ode_solve(rank: int | None) -> None:
    gauss, _ = _gaussian(rank)
    s_from, s_to = 40.0, 0.05
    x_t = s_from * torch.randn(8, 6, generator=torch.Generator().manual_seed(9), dtype=D64)

    def rhs(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # u = log sigma: dx/du = x - D(x, sigma)
        return x - gauss(x, u.exp().expand(x.shape[0]))

    span = torch.tensor([s_from, s_to], dtype=D64).log()
    ref = odeint(rhs, x_t, span, rtol=1e-11, atol=1e-11, method="dopri5")[-1]
    got = gauss.teleport(x_t, s_from, s_to)
    err = float((got - ref).abs().max() / ref.abs().max())
    assert err < 1e-8, f"rank={rank}: teleport vs dopri5(1e-11) relative deviation {err:.2e}"
    back = gauss.teleport(got, s_to, s_from)
    assert torch.allclose(back, x_t, rtol=1e-10, atol=1e-9), "teleport upward does not invert teleport downward"


def test_teleport_to_zero_and_per_sample_sigma() -> None:
    gauss, _ = _gaussian(None)
    x = torch.randn(4, 6, dtype=D64) * 10
    s_from = torch.tensor([10.0, 5.0, 2.0, 1.0], dtype=D64)
    step = gauss.teleport(x, s_from, 0.0)
    for i in range(4):
        one = gauss.teleport(x[i : i + 1], float(s_from[i]), 0.0)
        assert torch.allclose(step[i : i + 1], one, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=">= 0"):
        gauss.teleport(x, 1.0, -1.0)


def test_gaussian_properties_and_bad_input() -> None:
    gauss, data = _gaussian(None)
    assert gauss.mean.shape == (6,) and gauss.eigvecs.shape == (6, 6) and gauss.eigvals.shape == (6,)
    assert torch.allclose(gauss.covariance()[0], torch.cov(data.T), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="rank"):
        Gaussian.fit(data, rank=7)
    with pytest.raises(ValueError, match="at least 2"):
        Gaussian.fit(data[:1])
    g = Gaussian(torch.zeros(2), torch.eye(2))
    assert torch.allclose(g(torch.ones(1, 2), 1.0), torch.full((1, 2), 0.5))


def test_teleport_with_isotropic_part_matches_ode() -> None:
    # isotropic N(0, v I): every coordinate scales by sqrt((s_to^2 + v) / (s_from^2 + v)) in closed form
    v = 2.0
    iso = Gaussian(torch.zeros(3, dtype=D64), torch.tensor(v, dtype=D64))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(11), dtype=D64) * 10
    got = iso.teleport(x, 10.0, 1.0)
    ref = x * math.sqrt((1.0 + v) / (100.0 + v))
    assert torch.allclose(got, ref, rtol=1e-13, atol=1e-13), f"max deviation {float((got - ref).abs().max()):.2e}"
    # low rank plus isotropic: the closed form agrees with a tight solve of the model's own PF-ODE
    g = torch.Generator().manual_seed(12)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=D64))[0]
    lowrank = Gaussian.from_eig(torch.ones(1, dtype=D64), torch.randn(1, 6, generator=g, dtype=D64), basis[None],
                                torch.tensor([[3.0, 0.5]], dtype=D64), torch.tensor([0.3], dtype=D64))
    x_t = 20 * torch.randn(4, 6, generator=g, dtype=D64)

    def rhs(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x - lowrank(x, u.exp().expand(x.shape[0]))

    span = torch.tensor([20.0, 0.05], dtype=D64).log()
    ref = odeint(rhs, x_t, span, rtol=1e-11, atol=1e-11, method="dopri5")[-1]
    err = float((lowrank.teleport(x_t, 20.0, 0.05) - ref).abs().max() / ref.abs().max())
    assert err < 1e-8, f"low-rank + isotropic teleport vs dopri5 relative deviation {err:.2e}"
