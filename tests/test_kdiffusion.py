"""k-diffusion's samplers and DDIM (sample/kdiffusion.py): step for step against plain
reimplementations of k-diffusion's published algorithms (sampling.py, transcribed below) with the
same noise_sampler, convergence orders against the Gaussian's closed-form flow map, and per-sample
seeded noise."""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Gaussian, GaussianMixture
from scoredyn.sample import SAMPLERS, dpmpp_2m, euler, sigmas_geometric, sigmas_karras
from scoredyn.sample import kdiffusion as kd

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


# ----------------------------------------------------------------------------- k-diffusion, transcribed


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def ref_euler_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def ref_dpm_2(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def ref_dpm_2_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order, t, i, j):
    from scipy import integrate

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-12, epsabs=1e-14)[0]


def ref_lms(model, x, sigmas, order=4):
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i]))
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


sigma_fn = lambda t: t.neg().exp()  # noqa: E731
t_fn = lambda sigma: sigma.log().neg()  # noqa: E731


def ref_dpmpp_2s_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s))
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def ref_dpmpp_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
            s_ = t_fn(sd)
            x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, sigma_fn(s))
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
            t_next_ = t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


def ref_dpmpp_2m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def ref_dpmpp_3m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    denoised_1, denoised_2 = None, None
    h_1, h_2 = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / r
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ----------------------------------------------------------------------------- fixtures


def mixture(device):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, generator=g, dtype=F64) * 2
    a = torch.randn(3, 2, 2, generator=g, dtype=F64) * 0.5
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(2, dtype=F64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, covs).to(device)


def keyed_noise(shape, device):
    """A stateless noise_sampler: the draws depend on (sigma, sigma_next) only, so both implementations see the same noise."""

    def sampler(sigma, sigma_next):
        key = hash((round(float(sigma), 12), round(float(sigma_next), 12))) % (2**31)
        return torch.randn(shape, generator=torch.Generator().manual_seed(key), dtype=F64).to(device)

    return sampler


STOCHASTIC = {
    "euler_ancestral": ref_euler_ancestral,
    "dpm_2_ancestral": ref_dpm_2_ancestral,
    "dpmpp_2s_ancestral": ref_dpmpp_2s_ancestral,
    "dpmpp_sde": ref_dpmpp_sde,
    "dpmpp_2m_sde": ref_dpmpp_2m_sde,
    "dpmpp_3m_sde": ref_dpmpp_3m_sde,
}



def _problem(device: str, *, batch: int, seed: int, steps: int):
    """The shared test problem: the 2-D mixture denoiser, seeded starts at scale 10, a Karras grid on [0.02, 10]."""
    x = torch.randn(batch, 2, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(device) * 10
    return mixture(device), x, sigmas_karras(steps, sigma_min=0.02, sigma_max=10.0, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(STOCHASTIC))
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_stochastic_samplers_match_kdiffusion(device, name, eta):
    model, x, sigmas = _problem(device, batch=4, seed=1, steps=7)
    ns = keyed_noise(x.shape, device)
    ours = SAMPLERS[name](model, x, sigmas, eta=eta, s_noise=0.9, noise_sampler=ns)
    ref = STOCHASTIC[name](model, x, sigmas, eta=eta, s_noise=0.9, noise_sampler=ns)
    err = float((ours - ref).abs().max() / ref.abs().max())
    assert err < 1e-12, f"{name}(eta={eta}) vs k-diffusion's algorithm: rel diff {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_samplers_match_kdiffusion(device):
    model, x, sigmas = _problem(device, batch=4, seed=1, steps=9)
    pairs = [
        (kd.dpm_2(model, x, sigmas), ref_dpm_2(model, x, sigmas), "dpm_2"),
        (kd.lms(model, x, sigmas), ref_lms(model, x, sigmas), "lms"),
        (kd.lms(model, x, sigmas, order=2), ref_lms(model, x, sigmas, order=2), "lms order 2"),
        (kd.dpmpp_2m_sde(model, x, sigmas, eta=0.5, solver_type="heun", noise_sampler=keyed_noise(x.shape, device)),
         ref_dpmpp_2m_sde(model, x, sigmas, eta=0.5, solver_type="heun", noise_sampler=keyed_noise(x.shape, device)), "2m_sde heun"),
    ]
    for ours, ref, name in pairs:
        err = float((ours - ref).abs().max() / ref.abs().max())
        assert err < 1e-10, f"{name} vs k-diffusion's algorithm: rel diff {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_ddim_identities(device):
    model, x, sigmas = _problem(device, batch=4, seed=2, steps=8)
    err = float((kd.ddim(model, x, sigmas) - euler(model, x, sigmas)).abs().max())
    assert err < 1e-12, f"ddim(eta=0) vs euler: {err:.2e}"
    ns = keyed_noise(x.shape, device)
    err = float((kd.ddim(model, x, sigmas, eta=1.0, noise_sampler=ns) - kd.euler_ancestral(model, x, sigmas, noise_sampler=ns)).abs().max())
    assert err < 1e-12, f"ddim(eta=1) vs euler_ancestral: {err:.2e}"
    err = float((kd.dpmpp_2m_sde(model, x, sigmas, eta=0.0) - dpmpp_2m(model, x, sigmas)).abs().max())
    assert err < 1e-12, f"dpmpp_2m_sde(eta=0) vs dpmpp_2m: {err:.2e}"
    err = float((kd.dpm_2_ancestral(model, x, sigmas, eta=0.0) - kd.dpm_2(model, x, sigmas)).abs().max())
    assert err < 1e-12, f"dpm_2_ancestral(eta=0) vs dpm_2: {err:.2e}"
    clipped = kd.ddim(model, x, sigmas, clip=0.5)
    assert float(clipped.abs().max()) <= 0.5 + 1e-12, "ddim(clip=0.5) returned values outside [-0.5, 0.5]"


def _order(name, runner, model, x, lo, hi, ns=(16, 32, 64)):
    exact = model.teleport(x, hi, lo)
    errs = [float((runner(model, x, sigmas_geometric(n + 1, sigma_max=hi, sigma_min=lo)) - exact).abs().max()) for n in ns]
    return [math.log2(errs[k] / errs[k + 1]) for k in range(len(errs) - 1)], errs


ORDERS = {  # sampler (deterministic setting) -> least observed order
    "ddim": (lambda m, x, s: kd.ddim(m, x, s), 0.9),
    "dpm_2": (lambda m, x, s: kd.dpm_2(m, x, s), 1.9),
    "dpm_2_ancestral(eta=0)": (lambda m, x, s: kd.dpm_2_ancestral(m, x, s, eta=0.0), 1.9),
    "dpmpp_2s_ancestral(eta=0)": (lambda m, x, s: kd.dpmpp_2s_ancestral(m, x, s, eta=0.0), 1.9),
    "dpmpp_sde(eta=0)": (lambda m, x, s: kd.dpmpp_sde(m, x, s, eta=0.0), 1.9),
    "dpmpp_2m_sde(eta=0)": (lambda m, x, s: kd.dpmpp_2m_sde(m, x, s, eta=0.0), 1.9),
    # multistep methods start with one first-order step (local error h^2), so the global order is 2
    # at worst; the measured orders are stated in the assertion message
    "dpmpp_3m_sde(eta=0)": (lambda m, x, s: kd.dpmpp_3m_sde(m, x, s, eta=0.0), 1.9),
    "lms": (lambda m, x, s: kd.lms(m, x, s), 1.9),
}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_convergence_order_against_the_gaussian_flow_map(name):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    model = Gaussian(torch.randn(3, generator=g, dtype=F64), a @ a.T + 0.01 * torch.eye(3, dtype=F64))
    x = torch.randn(5, 3, generator=g, dtype=F64) * 20
    runner, least = ORDERS[name]
    orders, errs = _order(name, runner, model, x, 0.05, 20.0)
    assert min(orders) > least, f"{name}: observed orders {[round(o, 2) for o in orders]} (errors {errs}), expected > {least}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(STOCHASTIC) + ["ddim"])
def test_seeded_noise_is_per_sample(device, name):
    model, x, sigmas = _problem(device, batch=3, seed=5, steps=6)
    opts = dict(eta=0.8) if name == "ddim" else {}
    batch = SAMPLERS[name](model, x, sigmas, seeds=[7, 8, 9], **opts)
    alone = SAMPLERS[name](model, x[1:2], sigmas, seeds=[8], **opts)
    if device == "cpu":
        assert torch.equal(batch[1:2], alone), f"{name}: sample 1 depends on its batch"
    else:
        # on CUDA the mixture's batched linear algebra may pick batch-size-dependent kernels (seen on an
        # H200: equal to 4 printed digits, not bitwise); the noise itself is the same, which a wrong draw
        # (an O(1) change) would break far above this bound
        rel = float((batch[1:2] - alone).norm() / alone.norm())
        assert rel < 1e-10, f"{name}: sample 1 differs from its batch-mate by {rel:.2e} relative"
    other = SAMPLERS[name](model, x, sigmas, seeds=[7, 80, 9], **opts)
    assert not torch.equal(batch[1], other[1]), f"{name}: the seed has no effect"


def test_dpmpp_sde_default_noise_is_a_brownian_pair():
    """The whole-step increment contains the half-step one: corr = sqrt(dt_1 / (dt_1 + dt_2))."""
    base = iter(torch.randn(2, 200000, 1, dtype=F64, generator=torch.Generator().manual_seed(0)))
    pair = kd._BrownianPair(lambda s, sn: next(base))
    z1 = pair(4.0, 3.0)
    z = pair(4.0, 1.0)
    corr = float((z1 * z).mean())
    assert abs(corr - math.sqrt(1 / 3)) < 0.01, f"correlation {corr:.4f}, expected {math.sqrt(1 / 3):.4f}"
    assert abs(float(z.var()) - 1) < 0.02, f"whole-step draw variance {float(z.var()):.4f}, expected 1"


def test_bad_options():
    model = mixture("cpu")
    x = torch.zeros(2, 2, dtype=F64)
    s = sigmas_karras(4, sigma_min=0.1, sigma_max=1.0)
    with pytest.raises(ValueError, match="eta"):
        kd.euler_ancestral(model, x, s, eta=-1.0)
    with pytest.raises(ValueError, match="clip"):
        kd.ddim(model, x, s, clip=0.0)
    with pytest.raises(ValueError, match="order"):
        kd.lms(model, x, s, order=0)
    with pytest.raises(ValueError, match="solver_type"):
        kd.dpmpp_2m_sde(model, x, s, solver_type="rk4")
    with pytest.raises(ValueError, match="noise_sampler"):
        kd.dpmpp_2m_sde(model, x, s, noise_sampler=3)
