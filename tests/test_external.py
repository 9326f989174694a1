"""scoredyn.external: each wrapper against the analytic Gaussian disguised as the external network
(its exact epsilon / v / x0 / score written out by hand), and a random tiny diffusers UNet sampled
by scoredyn's samplers against diffusers' own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from _tiny_unet import ddpm_scheduler, need_diffusers, save_tiny_model, tiny_unet
from scoredyn.analytic import Gaussian
from scoredyn.external import Affine, ContinuousVPDenoiser, EDMDenoiser, ScoreDenoiser, VPDenoiser, from_diffusers, load_diffusers
from scoredyn.sample import ddim, dpmpp_2m, euler

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm())


# ----------------------------------------------------------------------------- the Gaussian oracle


def gaussian_problem(device: str, d: int = 3):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    return mu.to(device), cov.to(device)


def exact_denoiser(mu, cov, x, sigma):
    """``mu + C (C + sigma^2 I)^-1 (x - mu)`` by a direct solve, per sample."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    out = [mu + cov @ torch.linalg.solve(cov + float(s) ** 2 * eye, xi - mu) for xi, s in zip(x, sigma)]
    return torch.stack(out)


def linear_abar(T: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), 0)


def disguised(mu, cov, sigma_of_t, prediction):
    """The Gaussian as a VP network ``net(x_vp, t)``: its exact epsilon, v or x0 at noise level ``sigma(t)``."""

    def net(u, t):
        s = sigma_of_t(t).to(u.dtype)[:, None]
        abar = 1 / (1 + s * s)
        x = u / abar.sqrt()  # back to VE coordinates
        x0 = exact_denoiser(mu, cov, x, s[:, 0])
        eps = (x - x0) / s
        if prediction == "epsilon":
            return eps
        if prediction == "v_prediction":
            return abar.sqrt() * eps - (1 - abar).sqrt() * x0
        return x0

    return net


def np_interp(t, table):
    """sigma at fractional timestep t, linear in t (as numpy.interp)."""
    lo = t.floor().long().clamp(0, table.numel() - 2)
    w = t - lo
    return table[lo] * (1 - w) + table[lo + 1] * w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("timestep_map", ["linear", "log"])
def test_vp_denoiser_is_exact_for_the_disguised_gaussian(device, prediction, timestep_map):
    mu, cov = gaussian_problem(device)
    abar = linear_abar()
    table = ((1 - abar) / abar).sqrt().to(device)
    if timestep_map == "linear":
        sigma_of_t = lambda t: np_interp(t.double(), table)  # noqa: E731
    else:
        sigma_of_t = lambda t: np_interp(t.double(), table.log()).exp()  # noqa: E731
    den = VPDenoiser(disguised(mu, cov, sigma_of_t, prediction), abar, prediction=prediction, timestep_map=timestep_map)
    assert den.sigma_min == pytest.approx(float(table[0])) and den.sigma_max == pytest.approx(float(table[-1]))
    x = torch.randn(5, 3, dtype=F64, device=device, generator=None) * 3
    sigma = torch.tensor([0.02, 0.3, 1.7, 11.0, 150.0], dtype=F64, device=device)  # between table entries
    got = den(x, sigma)
    want = exact_denoiser(mu, cov, x, sigma)
    err = rel(got, want)
    assert err < 1e-10, f"VPDenoiser({prediction}, {timestep_map}) vs the exact Gaussian denoiser: rel diff {err:.2e}"
    gauss = Gaussian(mu, cov)(x, sigma)
    assert rel(got, gauss) < 1e-10, f"vs scoredyn's Gaussian: rel diff {rel(got, gauss):.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_vp_denoiser_quantize_and_nearest(device):
    mu, cov = gaussian_problem(device)
    abar = linear_abar(50)
    table = ((1 - abar) / abar).sqrt().to(device)
    seen = []

    def sigma_of_t(t):
        seen.append(t.clone())
        return table[t.round().long()]

    net = disguised(mu, cov, sigma_of_t, "epsilon")
    x = torch.randn(3, 3, dtype=F64, device=device)
    sigma = table[[3, 20, 40]] * torch.tensor([1.01, 0.995, 1.002], dtype=F64, device=device)
    q = VPDenoiser(net, abar, quantize=True)(x, sigma)
    assert torch.equal(seen[-1], torch.tensor([3.0, 20.0, 40.0], dtype=F64, device=device)), f"quantized timesteps {seen[-1]}"
    err = rel(q, exact_denoiser(mu, cov, x, table[[3, 20, 40]]))
    assert err < 1e-10, f"quantize=True is the exact denoiser at the snapped sigma: rel diff {err:.2e}"
    VPDenoiser(net, abar, timestep_map="nearest")(x, sigma)
    assert torch.equal(seen[-1], torch.tensor([3.0, 20.0, 40.0], dtype=F64, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_continuous_vp_denoiser_is_exact(device, prediction):
    mu, cov = gaussian_problem(device)
    bmin, bmax = 0.1, 20.0

    def sigma_of_label(label):  # score_sde's linear VP SDE, written out
        t = label.double() / 999
        return torch.sqrt(torch.exp(0.5 * (bmax - bmin) * t * t + bmin * t) - 1)

    den = ContinuousVPDenoiser(disguised(mu, cov, sigma_of_label, prediction), prediction=prediction)
    assert den.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)))
    x = torch.randn(4, 3, dtype=F64, device=device) * 2
    sigma = torch.tensor([0.005, 0.5, 5.0, 80.0], dtype=F64, device=device)
    err = rel(den(x, sigma), exact_denoiser(mu, cov, x, sigma))
    assert err < 1e-10, f"ContinuousVPDenoiser({prediction}) vs the exact denoiser: rel diff {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_score_edm_and_affine_wrappers_are_exact(device):
    mu, cov = gaussian_problem(device)
    x = torch.randn(4, 3, dtype=F64, device=device)
    sigma = torch.tensor([0.01, 0.4, 3.0, 40.0], dtype=F64, device=device)
    want = exact_denoiser(mu, cov, x, sigma)

    def score(x, s):  # grad log N(x; mu, C + s^2 I) by hand
        eye = torch.eye(3, dtype=F64, device=device)
        return torch.stack([-torch.linalg.solve(cov + float(si) ** 2 * eye, xi - mu) for xi, si in zip(x, s)])

    err = rel(ScoreDenoiser(score)(x, sigma), want)
    assert err < 1e-10, f"ScoreDenoiser: rel diff {err:.2e}"

    class Net(torch.nn.Module):
        sigma_min, sigma_max = 0.002, 80.0

        def forward(self, x, sigma, class_labels=None):
            assert class_labels is None
            return exact_denoiser(mu, cov, x, sigma)

    edm = EDMDenoiser(Net())
    assert (edm.sigma_min, edm.sigma_max) == (0.002, 80.0)
    err = rel(edm(x, sigma), want)
    assert err < 1e-12, f"EDMDenoiser: rel diff {err:.2e}"
    # a Gaussian on u used on x = 2 u - 1 is the Gaussian N(2 mu - 1, 4 C)
    aff = Affine(Gaussian(mu, cov), scale=2.0, shift=-1.0)
    err = rel(aff(x, sigma), exact_denoiser(2 * mu - 1, 4 * cov, x, sigma))
    assert err < 1e-10, f"Affine(scale=2, shift=-1): rel diff {err:.2e}"


def test_wrappers_reject_bad_input():
    abar = linear_abar(10)
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPDenoiser(lambda u, t: u, abar.flip(0))
    with pytest.raises(ValueError, match="prediction must be"):
        VPDenoiser(lambda u, t: u, abar, prediction="eps")
    with pytest.raises(ValueError, match="timestep_map"):
        VPDenoiser(lambda u, t: u, abar, timestep_map="cubic")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        VPDenoiser(lambda u, t: u, torch.cat([torch.ones(1, dtype=F64), abar]))
    with pytest.raises(ValueError, match="scale"):
        Affine(lambda x, s: x, scale=0.0)
    with pytest.raises(ValueError, match="sigma"):
        VPDenoiser(lambda u, t: u, abar)(torch.zeros(2, 3), -1.0)
    with pytest.raises(ValueError, match="expected"):
        VPDenoiser(lambda u, t: u[:, :2], abar)(torch.zeros(2, 3, 4, 4), 1.0)


# ----------------------------------------------------------------------------- diffusers


def _device_model(device):
    need_diffusers()
    return tiny_unet().to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_euler_and_dpmpp_2m_match_diffusers_schedulers(device, prediction):
    diffusers = need_diffusers()
    unet = _device_model(device)
    base = ddpm_scheduler(prediction)
    den = from_diffusers(unet, base)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)

    sch = diffusers.EulerDiscreteScheduler.from_config(base.config)
    sch.set_timesteps(6, device=device)
    x = z * sch.init_noise_sigma
    ref = x.clone()
    for t in sch.timesteps:
        ref = sch.step(unet(sch.scale_model_input(ref, t), t).sample, t, ref).prev_sample
    err = rel(euler(den, x, sch.sigmas), ref)
    assert err < 2e-5, f"euler vs EulerDiscreteScheduler ({prediction}): rel diff {err:.2e}"

    sch = diffusers.DPMSolverMultistepScheduler.from_config(base.config, lower_order_final=False)
    sch.set_timesteps(6, device=device)
    ref = z.clone()
    for t in sch.timesteps:
        ref = sch.step(unet(sch.scale_model_input(ref, t), t).sample, t, ref).prev_sample
    x = z * math.sqrt(1 + float(sch.sigmas[0]) ** 2)  # x_vp at sigma_max in VE coordinates
    err = rel(dpmpp_2m(den, x, sch.sigmas), ref)
    assert err < 2e-5, f"dpmpp_2m vs DPMSolverMultistepScheduler ({prediction}): rel diff {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_ddim_scheduler(device, prediction, clip, eta):
    diffusers = need_diffusers()
    unet = _device_model(device)
    base = ddpm_scheduler(prediction)
    den = from_diffusers(unet, base)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 1, 8, 8, generator=g).to(device)
    sch = diffusers.DDIMScheduler.from_config(base.config, clip_sample=clip)
    sch.set_timesteps(6, device=device)
    abar = sch.alphas_cumprod.double()
    steps = sch.timesteps.cpu()
    grid = torch.cat([((1 - abar) / abar).sqrt()[steps], torch.zeros(1, dtype=F64)])
    noises = {float(s): torch.randn(z.shape, generator=g).to(device) for s in grid[:-1]}
    ref = z.clone()
    for i, t in enumerate(sch.timesteps):
        ref = sch.step(unet(ref, t).sample, t, ref, eta=eta, variance_noise=noises[float(grid[i])]).prev_sample
    x = z / float(abar[steps[0]]) ** 0.5
    ours = ddim(den, x, grid, eta=eta, clip=1.0 if clip else None, noise_sampler=lambda s, s_next: noises[s])
    err = rel(ours, ref)
    assert err < 2e-5, f"ddim(eta={eta}, clip={clip}) vs DDIMScheduler ({prediction}): rel diff {err:.2e}"
    if clip:  # the clip is active on this random network, so the comparison exercises it
        unclipped = ddim(den, x, grid, eta=eta, noise_sampler=lambda s, s_next: noises[s])
        assert rel(unclipped, ref) > 1e-3, f"clipping made no difference (rel {rel(unclipped, ref):.2e})"


def test_load_diffusers_round_trip(tmp_path):
    need_diffusers()
    path = save_tiny_model(tmp_path / "model", prediction="v_prediction")
    den = load_diffusers(path)
    assert den.prediction == "v_prediction" and den.sigmas.numel() == 1000
    ref = from_diffusers(tiny_unet(), ddpm_scheduler("v_prediction"))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(den(x, 2.5), ref(x, 2.5)), "the loaded model differs from the saved one"
    flat = tmp_path / "flat"  # a UNet's config.json and the scheduler's scheduler_config.json side by side
    tiny_unet().save_pretrained(str(flat))
    ddpm_scheduler("v_prediction").save_pretrained(str(flat))
    with torch.no_grad():
        assert torch.equal(load_diffusers(flat)(x, 2.5), ref(x, 2.5)), "the flat folder loads a different model"
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_diffusers(tmp_path / "missing")


def test_missing_diffusers_is_a_clear_error(tmp_path, monkeypatch):
    need_diffusers()
    path = save_tiny_model(tmp_path / "model")
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'scoredyn\[diffusers\]'"):
        load_diffusers(path)
