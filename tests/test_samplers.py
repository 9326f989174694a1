"""Samplers of scoredyn.sample against independent oracles (all float64):

* convergence order on a Gaussian mixture with exact score vs a tight Dormand-Prince reference
  (cross-checked with scipy's DOP853); slopes of log error vs log steps, measured at writing time:
  euler 0.93, heun 2.00, dpmpp_2m 2.06, unipc order 2 bh2 2.22 / bh1 2.27 and order 1 1.93 (default
  lower-order last step, which caps the order at 2), unipc without it: order 2 -> 2.80, order 3 -> 4.25
  (UniC raises UniP-p to order p + 1, Zhao et al. 2023);
* the exact reductions of DESIGN.md §4 (multiplicative PF-ODE == autonomous ODE; noise-free annealed
  Langevin == Euler on the autonomous ODE) and closed-form solutions of linear fields (matrix exponential);
* teleportation vs the closed-form Gaussian ODE solution; NFE saved by ``with_teleport``;
* per-sample seeds, bad input, NaN detection, NCSNv2 schedule rules vs brute force and the
  published NCSNv2 configurations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.spatial.distance import pdist

from scoredyn._checks import bcast
from scoredyn.analytic.gaussian import Gaussian
from scoredyn.analytic.mixture import GaussianMixture
from scoredyn.sample import (
    FIELD_SAMPLERS,
    SAMPLERS,
    CountNFE,
    SamplerDivergence,
    annealed_langevin,
    autonomous,
    dpmpp_2m,
    euler,
    euler_maruyama,
    heun,
    max_pairwise_distance,
    ncsn_gamma,
    ncsn_overlap,
    ncsn_schedule,
    ncsn_step_lr,
    ncsn_variance_ratio,
    noise,
    ode_adaptive,
    sigmas_geometric,
    sigmas_karras,
    sigmas_loglinear,
    teleport,
    unconditional_ode,
    unipc,
    with_teleport,
)

F64 = torch.float64
SMAX, SMIN = 5.0, 0.2


def mixture_2d(dtype: torch.dtype = F64) -> GaussianMixture:
    w = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    mu = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=dtype)
    cov = torch.tensor(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.1, -0.05], [-0.05, 0.3]], [[0.25, 0.0], [0.0, 0.05]]], dtype=dtype
    )
    return GaussianMixture(w, mu, cov)


@pytest.fixture(scope="module")
def order_problem() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    gm = mixture_2d()
    x0 = gm.sample(32, sigma=SMAX, generator=torch.Generator().manual_seed(1))
    ref = ode_adaptive(gm, x0, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-10, atol=1e-10).x
    return gm, x0, ref


def mean_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).reshape(a.shape[0], -1).norm(dim=1).mean())


# --------------------------------------------------------------------------- order of convergence

ORDER_CASES = [
    ("euler-order1", euler, {}, 1.0, [16, 32, 64], 0.15),
    ("heun-order2", heun, {}, 2.0, [16, 32, 64], 0.2),
    ("dpmpp_2m-order2", dpmpp_2m, {}, 2.0, [16, 32, 64], 0.25),
    ("unipc_bh2_o2-order2", unipc, dict(order=2, variant="bh2"), 2.0, [16, 32, 64], 0.35),
    ("unipc_bh1_o2-order2", unipc, dict(order=2, variant="bh1"), 2.0, [16, 32, 64], 0.35),
    ("unipc_bh2_o1-order2", unipc, dict(order=1), 2.0, [16, 32, 64, 128], 0.25),
    ("unipc_bh2_o2_full-order3", unipc, dict(order=2, lower_order_final=False), 3.0, [16, 32, 64, 128], 0.35),
    ("unipc_bh2_o3_full-order4", unipc, dict(order=3, lower_order_final=False), 4.0, [16, 32, 64, 128], 0.45),
]


@pytest.mark.parametrize("name,fn,opts,expected,ns,tol", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_convergence_order(order_problem, name, fn, opts, expected, ns, tol) -> None:
    gm, x0, ref = order_problem
    errs = []
    for n in ns:
        grid = sigmas_karras(n + 1, sigma_min=SMIN, sigma_max=SMAX)[:-1]  # n steps, ending at SMIN > 0
        errs.append(mean_error(fn(gm, x0, grid, **opts), ref))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - expected) < tol, f"{name}: measured order {slope:.3f}, expected {expected} (errors {errs})"


def test_reference_against_scipy_dop853(order_problem) -> None:
    gm, x0, ref = order_problem

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).reshape(x0.shape)
        return ((x - gm(x, s)) / s).reshape(-1).numpy()

    sol = solve_ivp(rhs, (SMAX, SMIN), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    other = torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)
    err = float((other - ref).abs().max())
    assert err < 1e-8, f"torchdiffeq dopri5 reference differs from scipy DOP853 by {err:.3e}"


def test_ode_adaptive_counts_every_evaluation(order_problem) -> None:
    gm, x0, _ = order_problem
    counted = CountNFE(gm)
    nfe = ode_adaptive(counted, x0, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-6, atol=1e-6).nfe
    assert nfe == counted.nfe > 0, f"reported nfe {nfe}, counted {counted.nfe}"
    nfe0 = ode_adaptive(gm, x0, sigma_min=1.0, sigma_max=1.0).nfe
    assert nfe0 == 0
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        ode_adaptive(gm, x0, sigma_min=0.0, sigma_max=1.0)


def test_heun_second_order_beats_euler_at_equal_nfe(order_problem) -> None:
    gm, x0, ref = order_problem
    e_euler = mean_error(euler(gm, x0, sigmas_karras(33, sigma_min=SMIN, sigma_max=SMAX)[:-1]), ref)  # 32 NFE
    e_heun = mean_error(heun(gm, x0, sigmas_karras(17, sigma_min=SMIN, sigma_max=SMAX)[:-1]), ref)  # 32 NFE
    e_dpm = mean_error(dpmpp_2m(gm, x0, sigmas_karras(33, sigma_min=SMIN, sigma_max=SMAX)[:-1]), ref)  # 32 NFE
    assert e_heun < e_euler / 5 and e_dpm < e_euler / 5, f"euler {e_euler:.3e} heun {e_heun:.3e} dpm++ {e_dpm:.3e}"


# --------------------------------------------------------------------------- reductions (DESIGN §4)


class Multiplicative:
    """``D(x, sigma) = x + sigma f(x)`` with a fixed smooth nonlinear field ``f``."""

    def __init__(self, d: int = 3) -> None:
        g = torch.Generator().manual_seed(5)
        self.m = torch.randn(d, d, generator=g, dtype=F64)
        self.c = torch.randn(d, generator=g, dtype=F64)

    def field(self, x: torch.Tensor) -> torch.Tensor:
        return -(x - self.c) + 0.5 * torch.tanh(x @ self.m.T)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x + bcast(sigma, x) * self.field(x)


def multiplicative_models() -> list:
    from scoredyn.analytic.noise_agnostic import NoiseAgnostic

    data = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    return [Multiplicative(), NoiseAgnostic(data, sigma_min=0.1, sigma_max=3.0, conditioning="multiplicative")]


@pytest.mark.parametrize("k", [0, 1], ids=["fixed_field", "noise_agnostic"])
def test_pf_ode_equals_autonomous_adaptive(k: int) -> None:
    model = multiplicative_models()[k]
    x = 3.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    a = ode_adaptive(model, x, sigma_min=0.1, sigma_max=3.0, rtol=1e-10, atol=1e-10).x
    b = autonomous(model, x, 3.0 - 0.1, rtol=1e-10, atol=1e-10).x
    err = float((a - b).abs().max())
    assert err < 1e-8, f"PF-ODE vs autonomous ODE over tau = sigma_max - sigma_min differ by {err:.3e}"


@pytest.mark.parametrize("k", [0, 1], ids=["fixed_field", "noise_agnostic"])
@pytest.mark.parametrize("grid", ["linear", "karras"])
def test_pf_euler_equals_autonomous_euler(k: int, grid: str) -> None:
    model = multiplicative_models()[k]
    x = 3.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    n = 25
    if grid == "linear":
        sig = torch.linspace(3.0, 0.1, n + 1, dtype=F64)
        b = autonomous(model, x, 3.0 - 0.1, n_steps=n, method="euler").x
    else:
        sig = sigmas_karras(n + 1, sigma_min=0.1, sigma_max=3.0)[:-1]
        b = autonomous(model, x, 3.0 - sig, method="euler").x  # tau_i = sigma_max - sigma_i
    a = euler(model, x, sig)
    err = float((a - b).abs().max())
    assert err < 1e-12, f"Euler on the sigma grid vs Euler on the tau grid: max difference {err:.3e}"


@pytest.mark.parametrize("k", [0, 1], ids=["fixed_field", "noise_agnostic"])
def test_noise_free_langevin_is_euler_on_autonomous_ode(k: int) -> None:
    model = multiplicative_models()[k]
    x = 3.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    levels, t, eps = sigmas_geometric(6, sigma_min=0.1, sigma_max=3.0), 4, 2e-3
    s_l = float(levels[-1])
    h = [eps * float(s) / s_l**2 for s in levels for _ in range(t)] + [s_l]  # final denoise: h = sigma_L
    taus = torch.tensor([0.0] + list(np.cumsum(h)), dtype=F64)
    a = annealed_langevin(model, x, levels, n_steps_each=t, step_lr=eps, noise=False, denoise=True)
    b = autonomous(model, x, taus, method="euler").x
    err = float((a - b).abs().max())
    assert err < 1e-12, f"noise-free annealed Langevin vs Euler with h_i = eps sigma_i / sigma_L^2: {err:.3e}"


def test_autonomous_linear_field_against_matrix_exponential() -> None:
    a_np = np.array([[-1.0, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -0.8]])
    a = torch.from_numpy(a_np)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    tau = 1.7
    exact = x @ torch.from_numpy(expm(a_np * tau)).T
    field = lambda y: y @ a.T  # noqa: E731
    err_ad = float((autonomous(field, x, tau, rtol=1e-11, atol=1e-11).x - exact).abs().max())
    assert err_ad < 1e-8, f"dopri5 vs expm: {err_ad:.3e}"
    for method, expected in (("euler", 1.0), ("rk4", 4.0)):
        ns = [20, 40, 80]
        errs = [float((autonomous(field, x, tau, n_steps=n, method=method).x - exact).abs().max()) for n in ns]
        slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
        assert abs(slope - expected) < 0.15, f"autonomous {method}: measured order {slope:.3f}, expected {expected}"
    sol = autonomous(field, x, tau, n_steps=10, method="rk4", record=1)
    assert sol.states.shape == (11, 5, 3) and torch.equal(sol.states[0], x) and torch.equal(sol.states[-1], sol.x)
    assert sol.nfe == 40 and torch.allclose(sol.taus, torch.linspace(0, tau, 11, dtype=F64), rtol=0, atol=1e-15)
    sol = autonomous(field, x, torch.tensor([0.0, 0.5, tau], dtype=F64), rtol=1e-10, atol=1e-10, record=1)
    assert sol.states.shape == (3, 5, 3) and float((sol.x - exact).abs().max()) < 1e-8
    assert torch.equal(autonomous(field, x, 0.0).x, x)
    with pytest.raises(ValueError, match="n_steps"):
        autonomous(field, x, tau, method="euler")
    with pytest.raises(ValueError, match="method"):
        autonomous(field, x, tau, n_steps=3, method="midpoint")
    with pytest.raises(ValueError, match="strictly increasing"):
        autonomous(field, x, torch.tensor([0.0, 1.0, 1.0], dtype=F64))


# --------------------------------------------------------------------------- teleportation


def gaussian_3d() -> Gaussian:
    g = torch.Generator().manual_seed(8)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    return Gaussian(torch.tensor([1.0, -0.5, 0.25], dtype=F64), a @ a.T / 3 + 0.05 * torch.eye(3, dtype=F64))


def test_teleport_matches_tight_ode_solve() -> None:
    g = gaussian_3d()
    x = g.sample(16, sigma=SMAX, generator=torch.Generator().manual_seed(9))
    exact = teleport(g, x, SMAX, SMIN)
    ode = ode_adaptive(g, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-11, atol=1e-11).x
    err = float((exact - ode).abs().max())
    assert err < 1e-8, f"closed-form Gaussian PF-ODE solution vs dopri5: {err:.3e}"
    # teleport to sigma_skip, then the ODE == the ODE from the start == the exact solution
    mid = teleport(g, x, SMAX, 1.3)
    composed = ode_adaptive(g, mid, sigma_min=SMIN, sigma_max=1.3, rtol=1e-11, atol=1e-11).x
    err2 = float((composed - exact).abs().max())
    assert err2 < 1e-8, f"teleport + ODE vs exact: {err2:.3e}"


@pytest.mark.parametrize("fn", [euler, heun, dpmpp_2m, unipc], ids=lambda f: f.__name__)
def test_with_teleport_is_exact_where_it_skips(fn) -> None:
    g = gaussian_3d()
    x = g.sample(16, sigma=SMAX, generator=torch.Generator().manual_seed(10))
    grid = sigmas_karras(41, sigma_min=SMIN, sigma_max=SMAX)[:-1]
    exact = teleport(g, x, SMAX, SMIN)
    j = int((grid <= 1.0).nonzero()[0])
    tel = with_teleport(fn, g, 1.0)(g, x, grid)
    rest = fn(g, teleport(g, x, SMAX, float(grid[j])), grid[j:])
    assert torch.allclose(tel, rest, rtol=0, atol=1e-14), "with_teleport must run the sampler on grid[j:]"
    e_full, e_tel = mean_error(fn(g, x, grid), exact), mean_error(tel, exact)
    # one-step methods only lose the skipped steps' error; multistep ones also restart at low order
    factor = 1.0 if fn in (euler, heun) else 1.5
    assert e_tel < factor * e_full, f"{fn.__name__}: teleported error {e_tel:.3e}, full run {e_full:.3e}"


@pytest.mark.parametrize(
    "fn,per_step", [(euler, 1), (heun, 2), (dpmpp_2m, 1), (unipc, 1), (euler_maruyama, 1)], ids=lambda v: getattr(v, "__name__", str(v))
)
def test_with_teleport_saves_exactly_the_skipped_nfe(fn, per_step) -> None:
    gm = mixture_2d()
    gauss = Gaussian.fit(gm.sample(4000, generator=torch.Generator().manual_seed(11)))
    x = gm.sample(8, sigma=SMAX, generator=torch.Generator().manual_seed(12))
    grid = sigmas_karras(20, sigma_min=SMIN, sigma_max=SMAX)  # 20 levels + 0
    seen: list[dict] = []
    full, tel = CountNFE(gm), CountNFE(gm)
    out_full = fn(full, x, grid, seeds=list(range(8)))
    out_tel = with_teleport(fn, gauss, 2.0)(tel, x, grid, seeds=list(range(8)), callback=seen.append)
    j = int((grid <= 2.0).nonzero()[0])
    assert full.nfe - tel.nfe == per_step * j, f"saved {full.nfe - tel.nfe} NFE, skipped {j} steps x {per_step}"
    assert seen[0]["i"] == j and seen[0]["sigma"] == float(grid[j]), "first step after the jump must be grid[j]"
    assert not torch.allclose(out_full, out_tel), "non-Gaussian data: teleportation is not exact"
    assert torch.isfinite(out_tel).all()


def test_with_teleport_edge_cases() -> None:
    g = gaussian_3d()
    x = g.sample(4, sigma=SMAX, generator=torch.Generator().manual_seed(13))
    grid = sigmas_karras(10, sigma_min=SMIN, sigma_max=SMAX)
    assert torch.equal(with_teleport(euler, g, 100.0)(g, x, grid), euler(g, x, grid))  # nothing skipped
    all_out = with_teleport(euler, g, 0.0)(g, x, grid)  # everything skipped: the exact end point
    assert torch.allclose(all_out, teleport(g, x, SMAX, 0.0), atol=1e-14)
    assert with_teleport(heun, g, 1.0).__name__ == "heun_teleport"
    with pytest.raises(ValueError, match="teleport"):
        with_teleport(euler, mixture_2d(), 1.0)
    with pytest.raises(ValueError, match="sigma_skip"):
        with_teleport(euler, g, -1.0)


# --------------------------------------------------------------------------- seeds


def test_noise_depends_on_seed_and_step_only() -> None:
    seeds = list(range(100, 164))
    full = noise(seeds, (3, 4), "cpu", F64, step=7)
    assert full.shape == (64, 3, 4)
    one = noise([seeds[17]], (3, 4), "cpu", F64, step=7)
    assert torch.equal(full[17], one[0])
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    assert torch.equal(noise([seeds[p] for p in perm], (3, 4), "cpu", F64, step=7), full[perm])
    assert not torch.equal(noise(seeds, (3, 4), "cpu", F64, step=8), full)
    draws = full.flatten()
    assert abs(float(draws.mean())) < 0.1 and abs(float(draws.std()) - 1) < 0.1, "not standard normal"
    from scoredyn.sample.noise import NoiseStream, block_steps

    stream = NoiseStream(seeds[:5], (2,), "cpu", F64)  # 64 steps per block for 2-D data
    assert block_steps((2,)) == 64 and block_steps((3, 32, 32)) == 1
    for step in (0, 63, 64, 130, -1):  # the stream and the stateless function agree across blocks
        assert torch.equal(stream(step), noise(seeds[:5], (2,), "cpu", F64, step=step)), step
    from scoredyn.sample import Run

    run = Run("t", lambda y, s: y, full[:5], [1.0, 0.5], seeds=seeds[:5])
    assert torch.equal(run.noise(full[:5], 0), noise(seeds[:5], (3, 4), "cpu", F64, step=1))
    assert not torch.equal(run.noise(full[:5], 0), noise(seeds[:5], (3, 4), "cpu", F64)), "step 0 is the initial state's"
    f32 = noise(seeds, (3, 4), "cpu", torch.float32, step=7)
    assert f32.dtype == torch.float32
    with pytest.raises(ValueError, match="seeds is empty"):
        noise([], (3,), "cpu", F64)


STOCHASTIC = [
    ("heun_churn", heun, dict(s_churn=20.0, s_tmin=0.3, s_tmax=4.0), "karras"),
    ("euler_maruyama", euler_maruyama, {}, "karras"),
    ("annealed_langevin", annealed_langevin, dict(n_steps_each=3, step_lr=1e-3), "geometric"),
]


@pytest.mark.parametrize("name,fn,opts,grid", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_same_seed_same_sample_any_batch(name, fn, opts, grid) -> None:
    gm = mixture_2d()
    sig = sigmas_karras(12, sigma_min=0.05, sigma_max=SMAX) if grid == "karras" else sigmas_geometric(6, sigma_min=0.05, sigma_max=SMAX)
    seeds = list(range(1000, 1064))
    x = SMAX * noise(seeds, (2,), "cpu", F64)  # step 0: the initial state
    batch = fn(gm, x, sig, seeds=seeds, **opts)
    for b in (0, 17, 63):
        single = fn(gm, x[b : b + 1], sig, seeds=[seeds[b]], **opts)
        err = float((single[0] - batch[b]).abs().max())
        assert err < 1e-12, f"{name}: seed {seeds[b]} differs between batch of 1 and of 64 by {err:.3e}"
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = fn(gm, x[perm], sig, seeds=[seeds[p] for p in perm], **opts)
    err = float((shuffled - batch[perm]).abs().max())
    assert err < 1e-12, f"{name}: shuffled batch differs by {err:.3e}"
    other = fn(gm, x, sig, seeds=[s + 1 for s in seeds], **opts)
    assert float((other - batch).abs().max()) > 1e-3, f"{name}: the seeds have no effect"


@pytest.mark.parametrize(
    "name,fn,opts,n_steps,tol", [("heun_churn", heun, dict(s_churn=40.0), 64, 0.08), ("euler_maruyama", euler_maruyama, {}, 128, 0.1)],
    ids=["heun_churn", "euler_maruyama"],
)
def test_stochastic_samplers_sample_the_gaussian(name, fn, opts, n_steps, tol) -> None:
    g = Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    n = 4000
    x = g.sample(n, sigma=10.0, generator=torch.Generator().manual_seed(3))
    cov = g.covariance()[0]
    errs = []
    for steps in (n_steps // 4, n_steps):
        out = fn(g, x, sigmas_karras(steps, sigma_min=0.002, sigma_max=10.0), seeds=list(range(n)), **opts)
        errs.append(float(((torch.cov(out.T) - cov) / cov).diagonal().abs().max()))
    mean_err = float((out.mean(0) - g.mean).abs().max())
    assert errs[1] < tol and mean_err < 0.05, f"{name}: covariance relative error {errs[1]:.3f}, mean error {mean_err:.3f}"
    assert errs[0] > errs[1], f"{name}: discretisation bias must shrink with steps, got {errs}"


# --------------------------------------------------------------------------- bad input and NaN


@pytest.mark.parametrize("name", [*SAMPLERS, *FIELD_SAMPLERS])
def test_bad_grids_and_seeds(name: str) -> None:
    fn = {**SAMPLERS, **FIELD_SAMPLERS}[name]
    gm = mixture_2d() if name in SAMPLERS else (lambda y: -y)  # FIELD_SAMPLERS take a sigma-free field
    x = torch.zeros(4, 2, dtype=F64)
    cases = [
        (torch.tensor([1.0, 2.0, 0.5], dtype=F64), "strictly descending"),
        (torch.tensor([2.0, 1.0, 1.0], dtype=F64), "strictly descending"),
        (torch.tensor([1.0], dtype=F64), "at least 2"),
        (torch.tensor([1.0, 0.5, -0.1], dtype=F64), "negative"),
        (torch.tensor([1.0, float("nan"), 0.1], dtype=F64), "NaN"),
        (torch.tensor([[1.0, 0.5]], dtype=F64), "1-D"),
    ]
    for grid, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn(gm, x, grid)
    good = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    with pytest.raises(ValueError, match="one seed per sample"):
        fn(gm, x, good, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="integers"):
        fn(gm, x, good, seeds=[1.5, 2, 3, 4])
    with pytest.raises(ValueError, match="expected \\(B, \\*data_shape\\)"):
        fn(gm, torch.zeros(4, dtype=F64), good)
    with pytest.raises(ValueError, match="NaN"):
        fn(gm, torch.full((4, 2), float("nan"), dtype=F64), good)


class NaNBelow:
    """The mixture's denoiser, but NaN for sigma below a threshold; a field that is NaN from its 3rd call."""

    def __init__(self, threshold: float) -> None:
        self.gm, self.threshold, self.calls = mixture_2d(), threshold, 0

    def field(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return -x / 4 if self.calls < 3 else torch.full_like(x, float("nan"))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.gm(x, sigma)
        return torch.where(bcast(sigma < self.threshold, x), float("nan"), out)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "unipc", "euler_maruyama", "annealed_langevin"])
def test_nan_mid_run_names_step_and_sigma(name: str) -> None:
    fn = SAMPLERS[name]
    den = NaNBelow(1.0)
    x = SMAX * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    if name == "annealed_langevin":
        grid = sigmas_geometric(8, sigma_min=0.1, sigma_max=SMAX)
        level = int((grid < 1.0).nonzero()[0])
        step, s_from = level * 2, float(grid[level])
        opts = dict(n_steps_each=2, step_lr=1e-3, seeds=[0, 1, 2, 3])
    else:
        grid = sigmas_karras(10, sigma_min=0.1, sigma_max=SMAX)
        first = int((grid < 1.0).nonzero()[0])  # first grid point where D is NaN
        step = first if name in ("euler", "dpmpp_2m", "euler_maruyama") else first - 1
        s_from = float(grid[step])
        opts = dict(seeds=[0, 1, 2, 3])
    with pytest.raises(SamplerDivergence, match=f"step {step} \\(sigma {s_from:.6g} ->") as info:
        fn(den, x, grid, **opts)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FloatingPointError)


def test_nan_detection_without_host_sync(monkeypatch) -> None:
    """The accelerator path: the first bad step is tracked on the device and reported at the end."""
    from scoredyn.sample import common

    init = common.Run.__init__

    def deferred(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._eager = False

    monkeypatch.setattr(common.Run, "__init__", deferred)
    grid = sigmas_karras(10, sigma_min=0.1, sigma_max=SMAX)
    first = int((grid < 1.0).nonzero()[0])
    x = SMAX * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(SamplerDivergence, match=f"step {first} \\(sigma {float(grid[first]):.6g} ->"):
        # a network-like denoiser that keeps computing on NaN input (the analytic models refuse NaN input)
        euler(lambda y, s: torch.where(bcast(s < 1.0, y), float("nan"), 0.5 * y), x, grid)
    assert torch.isfinite(euler(mixture_2d(), x, grid)).all()


def test_nan_in_adaptive_and_unconditional() -> None:
    den = NaNBelow(1.0)
    x = SMAX * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(SamplerDivergence, match="non-finite derivative at sigma 0.9"):
        ode_adaptive(den, x, sigma_min=0.5, sigma_max=SMAX)  # D is NaN below 1: the first bad sigma the solver tries is just below 1
    grid = sigmas_karras(10, sigma_min=0.1, sigma_max=SMAX)
    with pytest.raises(SamplerDivergence, match=f"step 2 \\(sigma {float(grid[2]):.6g} ->"):
        unconditional_ode(den, x, grid)


# --------------------------------------------------------------------------- registry, NFE, callback


def test_every_registered_sampler_runs_and_counts_nfe() -> None:
    gm = mixture_2d()
    x = gm.sample(16, sigma=SMAX, generator=torch.Generator().manual_seed(14))
    n = 12
    grid0 = sigmas_karras(n, sigma_min=0.02, sigma_max=SMAX)  # n levels + 0: n steps
    expected_nfe = {"euler": n, "heun": 2 * n - 1, "dpmpp_2m": n, "unipc": n, "euler_maruyama": n,
                    "annealed_langevin": 5 * n + 1}  # 5 Langevin steps per level, then the denoising step
    for name, fn in SAMPLERS.items():
        counted = CountNFE(gm)
        out = fn(counted, x, grid0, seeds=list(range(16)))
        if name in expected_nfe:
            assert counted.nfe == expected_nfe[name], f"{name}: {counted.nfe} NFE, expected {expected_nfe[name]}"
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all(), name
        # samples end near the data: their mean log density is far above that of the initial noise
        assert float(gm.log_prob(out, 0.02).mean()) > float(gm.log_prob(x, 0.02).mean()) + 5, name


def test_float32_state_stays_float32() -> None:
    gm = mixture_2d(torch.float32)
    x = gm.sample(8, sigma=SMAX, generator=torch.Generator().manual_seed(15))
    for fn in (euler, heun, dpmpp_2m, unipc, euler_maruyama):
        out = fn(gm, x, sigmas_karras(10, sigma_min=0.02, sigma_max=SMAX), seeds=list(range(8)))
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), fn.__name__


def test_callback_and_progress(capsys) -> None:
    gm = mixture_2d()
    x = gm.sample(4, sigma=SMAX, generator=torch.Generator().manual_seed(16))
    grid = sigmas_karras(6, sigma_min=0.1, sigma_max=SMAX)
    seen: list[dict] = []
    out = dpmpp_2m(gm, x, grid, callback=seen.append, progress=True)
    assert [s["i"] for s in seen] == list(range(6))
    assert all(set(s) >= {"i", "sigma", "x", "denoised"} for s in seen)
    assert [s["sigma"] for s in seen] == grid[:-1].tolist()
    assert torch.equal(seen[-1]["denoised"], out), "the step to 0 returns the denoised value"


def test_count_nfe_forwards_attributes() -> None:
    gm = mixture_2d()
    c = CountNFE(gm)
    x = torch.zeros(3, 2, dtype=F64)
    c(x, 1.0)
    c.score(x, 1.0)
    assert c.nfe == 2 and c.data_shape == (2,)
    assert not hasattr(CountNFE(lambda y, s: y), "score")


# --------------------------------------------------------------------------- unconditional ODE (Zhou et al.)


class PointField:
    """Score field of one training point at the noise level its distance implies:
    ``f(x) = d (x0 - x) / |x - x0|^2``, so ``sigma_hat = sqrt(d)/|f| = |x - x0|/sqrt(d)``."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.x0 = x0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.x0 - x
        return y * (x.shape[1] / (y * y).sum(1, keepdim=True))


def test_unconditional_ode_uses_the_models_noise_estimate() -> None:
    d = 8
    x0 = torch.linspace(-1, 1, d, dtype=F64)
    z = torch.randn(4, d, generator=torch.Generator().manual_seed(17), dtype=F64)
    rho = 2.0  # the state is at noise level 2, the schedule says 5
    x = x0 + rho * math.sqrt(d) * z / z.norm(dim=1, keepdim=True)
    grid = sigmas_karras(10, sigma_min=0.05, sigma_max=SMAX)
    seen: list[dict] = []
    out = unconditional_ode(PointField(x0), x, grid, callback=seen.append)
    assert float((out - x0).abs().max()) < 1e-12, "the denoised estimate of a single point is the point"
    for s in seen:  # no move until the schedule drops below rho; then the state sits on the schedule
        level = torch.full((4,), min(rho, s["sigma"]), dtype=F64)
        assert torch.allclose(s["sigma_hat"], level, rtol=1e-10), (s["i"], s["sigma_hat"], level)
    with_data = unconditional_ode(PointField(x0), x, grid, data=torch.stack([x0, x0 + 100.0]))
    assert float((with_data - x0).abs().max()) < 1e-12
    # plain Euler with the schedule's sigma overshoots past the point on the first step
    f = PointField(x0)
    s0, s1 = float(grid[0]), float(grid[1])
    step = f(x) * ((s0 - s1) * s0)
    along = ((step * (x0 - x)).sum(1) / ((x0 - x) ** 2).sum(1))
    assert bool((along > 1).all()), f"plain Euler moves {along.tolist()} of the way to x0 (overshoot expected > 1)"


def test_field_samplers_refuse_a_denoiser() -> None:
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="sigma-free field"):
        unconditional_ode(mixture_2d(), x, sigmas_karras(4, sigma_min=0.1, sigma_max=1.0))
    with pytest.raises(ValueError, match="sigma-free field"):
        autonomous(lambda y, s: y, x, 1.0, n_steps=2)


def test_unconditional_ode_on_noise_agnostic_model() -> None:
    from scoredyn.analytic.noise_agnostic import NoiseAgnostic

    d = 8  # in d = 2 the unconditional optimum's level weights sigma^(2-d) do not select a level
    data = torch.randn(30, d, generator=torch.Generator().manual_seed(18), dtype=F64)
    model = CountNFE(NoiseAgnostic(data, levels=sigmas_geometric(10, sigma_min=0.05, sigma_max=3.0), conditioning="unconditional"))
    g = torch.Generator().manual_seed(19)
    x = data[torch.randint(0, 30, (32,), generator=g)] + 3.0 * torch.randn(32, d, generator=g, dtype=F64)
    grid = sigmas_karras(20, sigma_min=0.05, sigma_max=3.0)
    seen: list[dict] = []
    out = unconditional_ode(model, x, grid, callback=seen.append)
    assert model.nfe == 20 and torch.isfinite(out).all()
    # the model's own noise estimate tracks the schedule (median over samples) once sampling is under way
    for s in seen[4:]:
        med = float(s["sigma_hat"].median())
        assert abs(med / s["sigma"] - 1) < 0.25, f"step {s['i']}: median sigma_hat {med:.3g} vs schedule {s['sigma']:.3g}"
    nn0, nn1 = (float(torch.cdist(y, data).min(1).values.median()) for y in (x, out))
    assert nn1 < nn0 / 2, f"samples must approach the data: median nearest distance {nn0:.3f} -> {nn1:.3f}"
    out_data = unconditional_ode(model, x, grid, data=data)
    assert torch.isfinite(out_data).all()


# --------------------------------------------------------------------------- grids and NCSNv2 schedule


def test_karras_grid_matches_formula_and_kdiffusion_float32() -> None:
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    s = sigmas_karras(n, sigma_min=lo, sigma_max=hi, rho=rho)
    i = np.arange(n)
    closed = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    assert s.dtype == F64 and s.shape == (n + 1,) and float(s[-1]) == 0.0
    rel = np.abs(s[:-1].numpy() - closed) / closed
    assert rel.max() < 1e-14, f"max relative difference to the closed formula {rel.max():.3e}"
    ramp = torch.linspace(0, 1, n)  # k-diffusion's get_sigmas_karras, float32
    kd = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    rel32 = float(((kd.double() - s[:-1]) / s[:-1]).abs().max())
    assert 0 < rel32 < 5e-6, f"k-diffusion float32 grid relative difference {rel32:.3e}"


def test_geometric_and_loglinear_grids() -> None:
    g = sigmas_geometric(11, sigma_min=0.01, sigma_max=50.0)
    assert g.shape == (11,) and float(g[0]) == 50.0 and float(g[-1]) == 0.01
    ratios = (g[:-1] / g[1:]).numpy()
    assert np.allclose(ratios, 5000 ** 0.1, rtol=1e-13), ratios
    ll = sigmas_loglinear(11, sigma_min=0.01, sigma_max=50.0)
    assert float(ll[-1]) == 0.0 and torch.equal(ll[:-1], g)
    for bad in (lambda: sigmas_geometric(1, sigma_min=1.0, sigma_max=2.0), lambda: sigmas_geometric(5, sigma_min=2.0, sigma_max=1.0),
                lambda: sigmas_karras(0, sigma_min=0.1, sigma_max=1.0), lambda: sigmas_karras(5, sigma_min=-0.1, sigma_max=1.0)):
        with pytest.raises(ValueError):
            bad()


def test_max_pairwise_distance_is_exact() -> None:
    g = torch.Generator().manual_seed(20)
    data = torch.randn(300, 5, generator=g, dtype=F64)
    brute = pdist(data.numpy()).max()
    for chunk in (7, 4096):
        got = max_pairwise_distance(data, chunk_size=chunk)
        assert abs(got - brute) <= 1e-15 * brute, f"chunk {chunk}: {got!r} vs brute force {brute!r}"
    # far from the origin the Gram identity cancels catastrophically; the refinement must not
    far = 1e6 + 1e-3 * torch.randn(200, 4, generator=g, dtype=F64)
    brute_far = pdist(far.numpy()).max()
    got_far = max_pairwise_distance(far, chunk_size=64)
    assert abs(got_far - brute_far) <= 1e-9 * brute_far, f"{got_far!r} vs {brute_far!r}"
    with pytest.raises(ValueError, match="at least 2"):
        max_pairwise_distance(data[:1])


def test_ncsn_techniques_solved() -> None:
    for dim in (5, 784, 3072):
        gamma = ncsn_gamma(dim)
        assert gamma > 1 and abs(ncsn_overlap(gamma, dim) - 0.5) < 1e-10, (dim, gamma)
    with pytest.raises(ValueError, match="no solution for data dimension 4"):
        ncsn_gamma(4)  # sqrt(2D) < 3: the overlap never falls below 0.997
    gamma, t, s_l = 1.05, 5, 0.01
    eps = ncsn_step_lr(t, gamma, sigma_min=s_l)
    brute = np.logspace(-12, 0, 200001)[:-1] * s_l**2
    vals = np.array([ncsn_variance_ratio(e, t, gamma, sigma_min=s_l) for e in brute[::50]])
    best = vals.min()
    got = ncsn_variance_ratio(eps, t, gamma, sigma_min=s_l)
    assert 1 < got <= best + 1e-12, f"Technique 4: ratio {got!r} at eps {eps:.4g}, brute-force minimum {best!r}"


@pytest.mark.parametrize(
    "dim,sigma_1,levels,t,published",
    [(3072, 50.0, 232, 5, 6.2e-6), (3 * 64 * 64, 90.0, 500, 5, 3.3e-6), (3 * 256 * 256, 348.0, 2311, 3, 9e-7)],
    ids=["cifar10", "celeba", "ffhq"],
)
def test_ncsn_step_lr_reproduces_published_configs(dim, sigma_1, levels, t, published) -> None:
    ratio = (sigma_1 / 0.01) ** (1 / (levels - 1))
    eps = ncsn_step_lr(t, ratio, sigma_min=0.01)
    assert abs(eps / published - 1) < 0.03, f"Technique 4 eps {eps:.4g} vs NCSNv2 config {published:.2g}"
    # the published level counts correspond to an overlap of 0.567 (stated as ~0.5 in the paper)
    assert abs(ncsn_overlap(ratio, dim) - 0.567) < 2e-3, ncsn_overlap(ratio, dim)


def test_ncsn_schedule_small_set() -> None:
    data = torch.randn(120, 6, generator=torch.Generator().manual_seed(21), dtype=F64) * torch.linspace(0.5, 2, 6, dtype=F64)
    s_max, n_levels, step_lr = ncsn_schedule(data, n_steps_each=4, sigma_min=0.02)
    assert abs(s_max - pdist(data.numpy()).max()) < 1e-12 * s_max
    gamma = ncsn_gamma(6)
    ratio = (s_max / 0.02) ** (1 / (n_levels - 1))
    assert ratio <= gamma * (1 + 1e-12) < (s_max / 0.02) ** (1 / (n_levels - 2)), (ratio, gamma, n_levels)
    assert step_lr == ncsn_step_lr(4, ratio, sigma_min=0.02)
    with pytest.raises(ValueError, match="sigma_min"):
        ncsn_schedule(data, 4, sigma_min=1e6)


@pytest.mark.parametrize("opts, match", [
    (dict(s_churn=10.0, s_tmax=float("nan")), "s_tmax"),
    (dict(s_churn=10.0, s_tmin=2.0, s_tmax=1.0), "s_tmax must be >= s_tmin"),
    (dict(s_churn=10.0, s_tmin=-1.0), "s_tmin"),
])
def test_heun_churn_window_is_validated(opts: dict, match: str) -> None:
    # a NaN or inverted window would silently switch churn off
    g = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        heun(g, x, sigmas_karras(4, sigma_min=0.1, sigma_max=5.0), seeds=[0, 1, 2], **opts)


def test_annealed_langevin_trailing_zero_means_the_final_denoising_step() -> None:
    gm = mixture_2d()
    x = gm.sample(6, sigma=SMAX, generator=torch.Generator().manual_seed(31))
    levels = sigmas_geometric(5, sigma_min=0.05, sigma_max=SMAX)
    with_zero = annealed_langevin(gm, x, torch.cat([levels, levels.new_zeros(1)]), n_steps_each=3, seeds=list(range(6)))
    without = annealed_langevin(gm, x, levels, n_steps_each=3, seeds=list(range(6)), denoise=True)
    assert torch.equal(with_zero, without), float((with_zero - without).abs().max())
    with pytest.raises(ValueError, match="denoise=False"):
        annealed_langevin(gm, x, torch.cat([levels, levels.new_zeros(1)]), denoise=False)
    with pytest.raises(ValueError, match="two positive levels"):
        annealed_langevin(gm, x, torch.tensor([1.0, 0.0], dtype=F64))
