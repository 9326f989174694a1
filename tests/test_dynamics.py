"""scoredyn.dynamics against closed forms and independent float64 oracles: linear fields, finite
differences, autograd Hessians of a mixture's log density, Kim's equilibrium spectrum of the
noise-agnostic optimum, fields with known roots in d = 1000, RK4 convergence order."""

import math

import numpy as np
import pytest
import torch

from scoredyn.analytic.mixture import GaussianMixture
from scoredyn.analytic.noise_agnostic import NoiseAgnostic
from scoredyn.dynamics import basins, fixed_points, jacobian, jvp, lyapunov_trace, trajectories
from scoredyn.dynamics.fixed_points import FixedPoints

D64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grid(lo: tuple[float, float], hi: tuple[float, float], n: int) -> torch.Tensor:
    xs = torch.linspace(lo[0], hi[0], n, dtype=D64)
    ys = torch.linspace(lo[1], hi[1], n, dtype=D64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


# ----------------------------------------------------------------------------------- jacobian
def test_jacobian_of_linear_field_is_its_matrix() -> None:
    g = _gen(0)
    a = torch.randn(6, 6, generator=g, dtype=D64)
    c = torch.randn(6, generator=g, dtype=D64)
    field = lambda x: (x.reshape(x.shape[0], 6) @ a.T + c).reshape(x.shape)  # noqa: E731
    x = torch.randn(5, 2, 3, generator=g, dtype=D64)
    jac = jacobian(field, x)
    err = (jac - a).abs().max().item()
    assert jac.shape == (5, 6, 6)
    assert err < 1e-13, f"Jacobian of x -> A x + c differs from A by {err:.3g}"


def _coupled(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([[0.3, -1.2, 0.5], [0.8, 0.1, -0.4], [-0.6, 0.9, 0.2]], dtype=x.dtype)
    return torch.tanh(x @ w.T) * x.roll(1, dims=1) + torch.sin(x) * x.sum(1, keepdim=True)


def test_jacobian_matches_central_differences() -> None:
    x = torch.randn(7, 3, generator=_gen(1), dtype=D64)
    jac = jacobian(_coupled, x)
    e = 1e-5
    fd = torch.stack(
        [(_coupled(x + e * torch.eye(3, dtype=D64)[j]) - _coupled(x - e * torch.eye(3, dtype=D64)[j])) / (2 * e) for j in range(3)],
        dim=2,
    )
    err = (jac - fd).abs().max().item()
    assert err < 1e-8, f"jacobian vs central differences (h=1e-5, error ~h^2): max abs error {err:.3g}"
    v = torch.randn(7, 3, generator=_gen(2), dtype=D64)
    jv = jvp(_coupled, x, v)
    err_jv = (jv - (jac @ v[:, :, None]).squeeze(-1)).abs().max().item()
    assert err_jv < 1e-12, f"jvp vs jacobian @ v: max abs error {err_jv:.3g}"


class _OldStyleSin(torch.autograd.Function):
    """An autograd.Function without setup_context: autograd works, torch.func transforms do not."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


def _inplace_after_save(x: torch.Tensor) -> torch.Tensor:
    e = x.exp()
    y = e * x  # saves e for backward
    e.mul_(2.0)  # breaks reverse mode, forward mode is fine
    return y + e


@pytest.mark.parametrize(
    "name,field,deriv,tier",
    [
        ("old-style autograd.Function", lambda x: _OldStyleSin.apply(x), lambda x: torch.cos(x), "loop"),
        ("in-place after save", _inplace_after_save, lambda x: x.exp() * (x + 3.0), "jvp"),
    ],
)
def test_jacobian_fallbacks_stay_correct(name, field, deriv, tier) -> None:
    x = torch.randn(4, 3, generator=_gen(3), dtype=D64)
    with pytest.warns(RuntimeWarning, match=f"using '{tier}'"):
        jac = jacobian(field, x)
    err = (jac - torch.diag_embed(deriv(x))).abs().max().item()
    assert err < 1e-13, f"{name}: fallback '{tier}' Jacobian error {err:.3g} (bound 1e-13)"


def test_jacobian_finite_differences_only_when_asked_and_in_float64() -> None:
    field = lambda x: torch.from_numpy(np.sin(x.numpy()))  # noqa: E731  (no AD can see through numpy)
    x = torch.randn(4, 3, generator=_gen(3), dtype=D64)
    with pytest.raises(RuntimeError, match="cannot differentiate the field exactly.*finite_differences=True"):
        jacobian(field, x)
    jac = jacobian(field, x, finite_differences=True)
    err = (jac - torch.diag_embed(torch.cos(x))).abs().max().item()
    assert err < 1e-8, f"float64 central differences: Jacobian error {err:.3g} (bound 1e-8)"
    with pytest.raises(ValueError, match="finite-difference derivatives need float64 states, got torch.float32"):
        jacobian(field, x.float(), finite_differences=True)


# ----------------------------------------------------------------------------------- fixed points of a mixture
def _log_density_hessian(gmm: GaussianMixture, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    grads, hessians = [], []
    for p in x:
        f = lambda z: gmm.log_prob(z[None], sigma)[0]  # noqa: E731
        grads.append(torch.autograd.functional.jacobian(f, p))
        hessians.append(torch.autograd.functional.hessian(f, p))
    return torch.stack(grads), torch.stack(hessians)


@pytest.mark.parametrize(
    "means,expected",
    [
        ([[-2.0, 0.0], [2.0, 0.0]], {"stable": 2, "saddle": 1}),
        ([[0.0, 0.0], [4.0, 0.0], [2.0, 3.5]], {"stable": 3, "saddle": 3, "unstable": 1}),
    ],
)
def test_mixture_fixed_points_found_and_classified(means, expected) -> None:
    mu = torch.tensor(means, dtype=D64)
    k = mu.shape[0]
    gmm = GaussianMixture(torch.full((k,), 1.0 / k, dtype=D64), mu, torch.full((k,), 0.3, dtype=D64))
    sigma = 0.1
    lo, hi = mu.amin(0) - 1.0, mu.amax(0) + 1.0
    x0 = _grid((float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1])), 13)
    fp = fixed_points(lambda x: gmm.score(x, sigma), x0, tol=1e-9)
    assert fp.method == "newton"
    assert bool(fp.converged.all()), f"{int((~fp.converged).sum())} of {len(fp)} starts did not converge"
    u = fp.unique(1e-6)
    assert u.count() == expected, f"kinds found {u.count()}, expected {expected}"
    assert int(u.counts.sum()) == len(fp)
    # Oracle 1: every point is a critical point of log p_sigma (autograd of the log density).
    grad, hess = _log_density_hessian(gmm, u.points, sigma)
    gmax = grad.abs().max().item()
    assert gmax < 1e-8, f"|grad log p_sigma| at the fixed points: {gmax:.3g}"
    # Oracle 2: the Jacobian spectrum equals the spectrum of the Hessian of log p_sigma.
    ev_h = torch.linalg.eigvalsh(hess)
    ev = torch.sort(u.eigenvalues.real, dim=1).values
    rel = ((ev - ev_h).abs() / ev_h.abs().amax(1, keepdim=True)).max().item()
    assert rel < 1e-8 and u.eigenvalues.imag.abs().max() < 1e-10, f"eigenvalues vs Hessian of log p: rel err {rel:.3g}"
    for kind, h in zip(u.kind, ev_h):
        want = "stable" if bool((h < 0).all()) else "unstable" if bool((h > 0).all()) else "saddle"
        assert kind == want, f"kind {kind} but Hessian eigenvalues {h.tolist()}"
    # Stable points sit on the means (exponentially small pull from the other modes).
    st = u.points[u.stable]
    dist = torch.cdist(st, mu).amin(1).max().item()
    assert dist < 1e-8, f"stable points are {dist:.3g} from the nearest mean"
    if k == 2:
        saddle = u.points[[i for i, s in enumerate(u.kind) if s == "saddle"]]
        err = (saddle - mu.mean(0)).abs().max().item()
        assert err < 1e-9, f"the two-mode saddle is {err:.3g} from the midpoint (exact by symmetry)"


def test_unique_merges_duplicates_and_keeps_lowest_residual() -> None:
    f = lambda x: x - x**3  # noqa: E731  roots -1, 0, 1 per coordinate
    x0 = torch.tensor([[0.9], [1.1], [0.95], [-1.2], [0.1], [-0.05]], dtype=D64)
    fp = fixed_points(f, x0, tol=1e-12)
    u = fp.unique(1e-6)
    order = torch.argsort(u.points[:, 0])
    assert torch.allclose(u.points[order, 0], torch.tensor([-1.0, 0.0, 1.0], dtype=D64), atol=1e-12, rtol=0)
    assert u.counts[order].tolist() == [1, 2, 3]
    assert [u.kind[i] for i in order.tolist()] == ["stable", "unstable", "stable"]
    for row in range(len(u)):
        members = (fp.points - u.points[row]).abs().amax(1) <= 1e-6
        assert u.residual[row] == fp.residual[members].min()
    again = fp.select(torch.tensor([0, 0, 1])).unique(1e-6)
    assert len(again) == 1 and int(again.counts[0]) == 3


def test_batch_composition_does_not_change_results() -> None:
    mu = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=D64)
    gmm = GaussianMixture(torch.tensor([0.5, 0.5], dtype=D64), mu, torch.tensor([0.3, 0.3], dtype=D64))
    field = lambda x: gmm.score(x, 0.1)  # noqa: E731
    x0 = _grid((-3.0, -1.0), (3.0, 1.0), 6)
    full = fixed_points(field, x0)
    for i in (0, 7, 20):
        one = fixed_points(field, x0[i : i + 1])
        diff = (one.points[0] - full.points[i]).abs().max().item()
        assert diff < 1e-12 and one.kind[0] == full.kind[i], f"start {i}: batch vs alone differ by {diff:.3g}"


def test_float32_converges_by_step_criterion() -> None:
    mu = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    gmm = GaussianMixture(torch.tensor([0.5, 0.5]), mu, torch.tensor([0.01, 0.01]))
    x0 = torch.tensor([[-1.9, 0.1], [2.1, -0.05], [0.01, 0.0]])
    fp = fixed_points(lambda x: gmm.score(x, 0.01), x0, tol=1e-7)
    assert fp.points.dtype == torch.float32 and bool(fp.converged.all())
    assert fp.kind == ["stable", "stable", "saddle"]
    err = (fp.points[:2] - mu).abs().max().item()
    assert err < 1e-5, f"float32 stable points {err:.3g} from the means"


# ----------------------------------------------------------------------------------- Kim's equilibria
def _separated_data(n: int, d: int, seed: int, min_dist: float) -> torch.Tensor:
    g = _gen(seed)
    while True:
        data = 1.5 * torch.randn(n, d, generator=g, dtype=D64)
        dist = torch.cdist(data, data) + 1e9 * torch.eye(n, dtype=D64)
        if float(dist.min()) >= min_dist:
            return data


@pytest.mark.parametrize("d", [2, 3, 5, 8])
def test_noise_agnostic_training_points_are_stable_with_predicted_spectrum(d: int) -> None:
    """Near x_i, f*(x) = (x_i - x) g + neighbours, with g = int s^-(d+2) ds / int s^-(d+1) ds over
    [s_min, s_max] (DESIGN.md §3: f* = grad L / M), i.e. J(x_i) = -g I with
    g = (d/(d+1)) (1 - r^(d+1)) / (1 - r^d) / s_min, r = s_min/s_max  ->  (d/(d+1))/s_min (Kim Thm 4.4).
    Neighbour j adds at most c_d (s_min/r_ij)^d relative to M (c_d = d 2^(d/2-1) Gamma(d/2),
    from int_0^inf s^-(d+1) e^(-r^2/2s^2) ds), which bounds both the shift of the equilibrium (in
    units of s_min, with Gamma((d+1)/2) 2^((d-1)/2)) and the relative change of the spectrum."""
    s_min, s_max = 2e-3, 10.0
    data = _separated_data(5, d, seed=100 + d, min_dist=1.0)
    model = NoiseAgnostic(data, sigma_min=s_min, sigma_max=s_max, conditioning="multiplicative")
    x0 = data + 0.2 * s_min * torch.randn(data.shape, generator=_gen(d), dtype=D64)
    tol = 1e-11
    fp = fixed_points(model.field, x0, tol=tol)
    assert bool(fp.converged.all()) and fp.kind == ["stable"] * 5, f"kinds {fp.kind}, converged {fp.converged.tolist()}"
    r = s_min / s_max
    predicted = -(d / (d + 1)) * (1 - r ** (d + 1)) / (1 - r**d) / s_min
    dist = torch.cdist(data, data) + 1e9 * torch.eye(5, dtype=D64)
    share = ((s_min / dist) ** d).sum(1)
    c_eig = 4 * d * 2 ** (d / 2 - 1) * math.gamma(d / 2)
    c_shift = 4 * d * 2 ** ((d - 1) / 2) * math.gamma((d + 1) / 2)
    solver = 2 * tol * math.sqrt(d) / abs(predicted) / s_min  # |x - x*| <= |f| / |J| at the end of Newton
    rel = (fp.eigenvalues.real / predicted - 1).abs().amax(1)
    shift = (fp.points - data).norm(dim=1) / s_min
    msg = (
        f"d={d}: measured eigenvalues / predicted {predicted:.6g} (= -{d}/{d + 1}/s_min up to {1 - (1 - r ** (d + 1)) / (1 - r**d):.1e}): "
        f"real parts in [{(fp.eigenvalues.real / predicted).min().item():.10f}, {(fp.eigenvalues.real / predicted).max().item():.10f}], "
        f"max |imag| {fp.eigenvalues.imag.abs().max().item():.2e}; shift |x*-x_i|/s_min max {shift.max().item():.2e}; "
        f"neighbour bounds {(c_eig * share).tolist()}"
    )
    assert bool((rel <= 1e-9 + c_eig * share).all()), msg
    assert bool((shift <= solver + c_shift * share).all()), msg
    assert fp.eigenvalues.imag.abs().max() <= 1e-6 * abs(predicted), msg


# ----------------------------------------------------------------------------------- Newton-Krylov, flow fallback
def _cubic_field(d: int, seed: int, coupling: float = 0.3):
    """f(x) = M (x - x^3), M = I + c W: roots {-1, 0, 1}^d; J = M diag(1 - 3 x^2), coupled, non-symmetric."""
    w = torch.randn(d, d, generator=_gen(seed), dtype=D64) / math.sqrt(d)
    m = torch.eye(d, dtype=D64) + coupling * w
    return (lambda x: (x - x**3) @ m.T), m


def test_newton_krylov_d1000_converges_to_known_roots() -> None:
    d = 1000
    field, m = _cubic_field(d, seed=0)
    g = _gen(1)
    roots = (torch.randint(0, 2, (3, d), generator=g) * 2 - 1).to(D64)
    roots[2, :50] = 0.0
    x0 = roots + 0.05 * torch.randn(3, d, generator=g, dtype=D64)
    fp = fixed_points(field, x0, tol=1e-9)
    assert fp.method == "newton-krylov"
    err = (fp.points - roots).abs().max().item()
    assert bool(fp.converged.all()) and err < 1e-8, f"converged {fp.converged.tolist()}, max error to the roots {err:.3g}"
    # all +-1: J = -2 M, stable iff Re eig(M) > 0 (oracle: dense eigensolve); with zeros: a saddle.
    assert float(torch.linalg.eigvals(m).real.min()) > 0
    assert fp.kind == ["stable", "stable", "saddle"], fp.kind
    assert int(fp.n_iter.max()) <= 10, f"Newton iterations {fp.n_iter.tolist()}"


def test_ritz_values_give_the_extreme_eigenvalues() -> None:
    d = 600
    lam = -torch.cat(
        [torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=D64), torch.linspace(10.0, 50.0, d - 5, dtype=D64), torch.tensor([80.0], dtype=D64)]
    )
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(5), dtype=D64))
    a = q @ torch.diag(lam) @ q.T  # symmetric J with known spectrum, extremes well separated
    root = torch.randn(d, generator=_gen(6), dtype=D64)
    field = lambda x: (x - root) @ a.T  # noqa: E731
    fp = fixed_points(field, root[None] + 0.1, eigs=4, krylov_dim=40)
    want = torch.cat([lam[:3], lam[-1:]])  # three rightmost, then the leftmost
    err = (fp.eigenvalues[0].real - want).abs().max().item()
    assert fp.method == "newton-krylov" and fp.kind == ["stable"]
    assert err < 1e-6, f"Ritz values {fp.eigenvalues[0].real.tolist()} vs {want.tolist()}: error {err:.3g}"


@pytest.mark.parametrize("d,method", [(3, "newton"), (1000, "newton-krylov")])
def test_flow_fallback_when_newton_cannot_decrease(d: int, method: str) -> None:
    """At x = 1/sqrt(3) (every coordinate) the Jacobian vanishes: no Newton step decreases |f|;
    following the flow (f > 0 there) leads into the basin of x = 1, where Newton finishes."""
    field, _ = _cubic_field(d, seed=2, coupling=0.1)
    x0 = torch.full((2, d), 1.0 / math.sqrt(3.0), dtype=D64)
    x0[1] = -x0[1]
    fp = fixed_points(field, x0, tol=1e-9)
    assert fp.method == method
    assert bool((fp.n_flow >= 1).all()), f"flow fallbacks {fp.n_flow.tolist()}"
    target = torch.stack([torch.ones(d, dtype=D64), -torch.ones(d, dtype=D64)])
    err = (fp.points - target).abs().max().item()
    assert bool(fp.converged.all()) and err < 1e-8, f"after the flow fallback: error {err:.3g} to +-1"
    assert fp.kind == ["stable", "stable"]


# ----------------------------------------------------------------------------------- trajectories, Lyapunov, basins
def test_trajectories_rk4_fourth_order_and_recording() -> None:
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=D64)
    x0 = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=D64)
    tau = 3.0
    exact = x0 @ torch.linalg.matrix_exp(a * tau).T
    errs = []
    for n in (20, 40, 80):
        traj = trajectories(lambda x: x @ a.T, x0, tau, n_steps=n, record=7)
        assert traj.shape == (math.ceil(n / 7) + 1, 2, 2) and torch.equal(traj[0], x0)
        errs.append((traj[-1] - exact).abs().max().item())
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(3.8 < s < 4.2 for s in slopes), f"RK4 errors {errs}, observed orders {slopes}"
    traj = trajectories(lambda x: x @ a.T, x0, tau, n_steps=30, record=3)
    step = trajectories(lambda x: x @ a.T, x0, tau, n_steps=30, record=1)
    assert torch.equal(traj, step[::3])


def test_lyapunov_trace_non_decreasing_along_the_optimal_flow() -> None:
    data = 2.0 * torch.randn(20, 2, generator=_gen(7), dtype=D64)
    model = NoiseAgnostic(data, sigma_min=0.05, sigma_max=5.0, conditioning="multiplicative")
    x0 = 3.0 * torch.randn(16, 2, generator=_gen(8), dtype=D64)
    traj = trajectories(model.field, x0, tau=4.0, n_steps=400, record=4)  # h * rate ~ 0.01 * 13
    trace = lyapunov_trace(model, traj)
    assert trace.shape == traj.shape[:2]
    drop = (trace[1:] - trace[:-1]).min().item()
    gain = (trace[-1] - trace[0]).min().item()
    assert drop >= -1e-12, f"log L decreased by {-drop:.3g} along a trajectory (Kim Thm 4.3: dL/dtau >= 0)"
    assert gain > 0, f"log L did not increase along some trajectory (min gain {gain:.3g})"
    with pytest.raises(ValueError, match="log_lyapunov"):
        lyapunov_trace(object(), traj)
    with pytest.raises(ValueError, match="shape"):
        lyapunov_trace(model, traj[0])


def test_basins_of_two_modes() -> None:
    mu = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=D64)
    gmm = GaussianMixture(torch.tensor([0.5, 0.5], dtype=D64), mu, torch.tensor([0.3, 0.3], dtype=D64))
    field = lambda x: gmm.score(x, 0.1)  # noqa: E731
    pts = _grid((-3.5, -2.0), (3.5, 2.0), 14)  # even n: no point on x = 0 (the stable manifold of the saddle)
    labels, att = basins(field, pts, tau=6.0, n_steps=120, tol=1e-3)
    assert att.shape[0] == 2, f"{att.shape[0]} attractors found: {att.tolist()}"
    side = (pts[:, 0] > 0).long()
    nearest = torch.cdist(att, mu).argmin(1)
    assert (att - mu[nearest]).abs().max() < 1e-3
    assert torch.equal(nearest[labels], side), "a point was assigned to the basin on the other side"
    given, _ = basins(field, pts, tau=6.0, n_steps=120, attractors=mu.flip(0), tol=1e-3)
    assert torch.equal(given, 1 - side)
    short, _ = basins(field, pts, tau=0.05, n_steps=2, attractors=mu, tol=1e-3)
    assert bool((short == -1).any()), "endpoints far from every attractor must be labelled -1"


# ----------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors() -> None:
    x = torch.randn(4, 2, dtype=D64)
    wrong = lambda z: z[:, :1]  # noqa: E731
    for call in (lambda: jacobian(wrong, x), lambda: fixed_points(wrong, x), lambda: trajectories(wrong, x, 1.0)):
        with pytest.raises(ValueError, match="expected \\(4, 2\\)"):
            call()
    nan = x.clone()
    nan[1, 0] = float("nan")
    for call in (lambda: fixed_points(lambda z: -z, nan), lambda: jacobian(lambda z: -z, nan), lambda: basins(lambda z: -z, nan, tau=1.0)):
        with pytest.raises(ValueError, match="NaN"):
            call()
    for tol in (0.0, -1e-6, float("nan")):
        with pytest.raises(ValueError, match="tol"):
            fixed_points(lambda z: -z, x, tol=tol)
    with pytest.raises(ValueError, match="method"):
        fixed_points(lambda z: -z, x, method="bisection")
    with pytest.raises(ValueError, match="eigs"):
        fixed_points(lambda z: -z, x, eigs=1)
    with pytest.raises(ValueError, match="field\\(x0\\)"):
        fixed_points(lambda z: z / 0.0, x)
    with pytest.raises(ValueError, match="shape"):
        fixed_points(lambda z: -z, torch.randn(4, dtype=D64))
    with pytest.raises(ValueError, match="tau"):
        trajectories(lambda z: -z, x, 0.0)
    with pytest.raises(ValueError, match="n_steps and record"):
        trajectories(lambda z: -z, x, 1.0, record=0)
    with pytest.raises(ValueError, match="NaN/Inf"):
        trajectories(lambda z: z**3, 10 * x, 10.0, n_steps=5)
    with pytest.raises(ValueError, match="tol"):
        FixedPoints.unique(fixed_points(lambda z: -z, x), 0.0)


def test_trajectories_and_autonomous_share_one_integrator() -> None:
    """One RK4 and one meaning of ``record`` (a stride): the sampler-facing and the dynamics-facing flow agree."""
    from scoredyn.sample import autonomous

    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=D64)
    x0 = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=D64)
    traj = trajectories(lambda x: x @ a.T, x0, 3.0, n_steps=30, record=7)
    sol = autonomous(lambda x: x @ a.T, x0, 3.0, n_steps=30, method="rk4", record=7)
    assert sol.states.shape == traj.shape == (6, 2, 2) and sol.nfe == 4 * 30
    assert sol.taus.tolist() == pytest.approx([0.0, 0.7, 1.4, 2.1, 2.8, 3.0], abs=1e-15)
    err = float((sol.states - traj).abs().max())  # h from a time grid vs tau / n_steps: rounding only
    assert err < 1e-13, f"autonomous(rk4) vs trajectories differ by {err:.3g}"
    assert sol.as_dict()["nfe"] == 120 and autonomous(lambda x: x @ a.T, x0, 3.0, n_steps=30, method="rk4").states is None
