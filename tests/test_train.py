"""Training: the loss's minimiser is the analytical optimum (NoiseAgnostic / Empirical), the loss
equals its closed forms, the sigma distributions, the EMA, moons sampling quality, checkpoints that
load safely, and clear errors for bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredyn.analytic import Empirical, NoiseAgnostic
from scoredyn.nets import MLP, UNet, precondition
from scoredyn.train import EMA, SigmaDist, TrainConfig, denoising_loss, ema_decay_at, fit, load

D64 = torch.float64
# Five points in the plane: a square and an off-centre point (a tiny data set with a known optimum).
TINY = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.3]])


def _probes(sigma_min: float, sigma_max: float, n: int = 2000, log_normal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``x_i + sigma z`` with sigma from the training law (where the loss constrains the net), float64."""
    g = torch.Generator().manual_seed(1)
    i = torch.randint(len(TINY), (n,), generator=g)
    if log_normal:
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g, dtype=D64))
    else:
        sigma = torch.exp(math.log(sigma_min) + torch.rand(n, generator=g, dtype=D64) * math.log(sigma_max / sigma_min))
    return TINY.double()[i] + sigma[:, None] * torch.randn(n, 2, generator=g, dtype=D64), sigma


def _brute_force_field(x: torch.Tensor, sigmas: torch.Tensor, log_pi: torch.Tensor, conditioning: str,
                       a: float = 2.0) -> torch.Tensor:
    """DESIGN.md §3 ``f* = sum_k pi_k lam_k c_k grad p_k / sum_k pi_k lam_k c_k^2 p_k`` with ``lam = sigma^a``,
    float64, one dense (levels x points) grid."""
    data = TINY.double()
    s = sigmas[:, None, None]
    log_p = log_pi[:, None, None] - torch.cdist(x, data)[None] ** 2 / (2 * s**2) - 2 * torch.log(s)  # d = 2
    c_pow = -1.0 if conditioning == "multiplicative" else 0.0  # c = 1/sigma or 1
    num = log_p + (a + c_pow - 2) * torch.log(s)  # weight of (x_i - x): lam c N / sigma^2
    den = log_p + (a + 2 * c_pow) * torch.log(s)
    m = torch.maximum(num.amax((0, 2)), den.amax((0, 2)))
    wn, wd = torch.exp(num - m[None, :, None]), torch.exp(den - m[None, :, None]).sum((0, 2))
    return (torch.einsum("kbn,nd->bd", wn, data) - wn.sum((0, 2))[:, None] * x) / wd[:, None]


def _log_uniform_rule(sigma_min: float, sigma_max: float, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre rule in log sigma (8 panels): nodes and log-weights of log-uniform sigma."""
    t, w = np.polynomial.legendre.leggauss(n // 8)
    edges = np.linspace(math.log(sigma_min), math.log(sigma_max), 9)
    nodes = np.concatenate([(b - a) / 2 * t + (a + b) / 2 for a, b in zip(edges[:-1], edges[1:])])
    weights = np.concatenate([(b - a) / 2 * w for a, b in zip(edges[:-1], edges[1:])]) / (edges[-1] - edges[0])
    return torch.from_numpy(np.exp(nodes)), torch.from_numpy(np.log(weights))


def _rel(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> float:
    return float((((a - b) ** 2).sum(1) * w).sum().sqrt() / ((b**2).sum(1) * w).sum().sqrt())


@pytest.mark.parametrize(
    "conditioning,sigma_dist,sigma_min,steps,batch",
    [("multiplicative", "loguniform", 0.1, 2000, 512), ("unconditional", "geometric", 0.3, 3000, 256)],
)
def test_noise_agnostic_net_approaches_analytic_optimum(conditioning: str, sigma_dist: str, sigma_min: float,
                                                        steps: int, batch: int) -> None:
    """A sigma-blind MLP trained with lambda = sigma^2 learns NoiseAgnostic's field for the same sigma law.

    Error in the loss's own metric: plain relative L2 for multiplicative (loss |f + z|^2), weighted by
    sigma^2 for unconditional (loss |sigma f + z|^2), at probes x_i + sigma z with sigma from the law.
    """
    sigma_max, n_levels = 3.0, 10
    x, sig = _probes(sigma_min, sigma_max)
    if sigma_dist == "geometric":
        levels = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n_levels, dtype=D64))
        optimum = NoiseAgnostic(TINY.double(), sigma_min=sigma_min, sigma_max=sigma_max, conditioning=conditioning, levels=levels)
        quad, log_pi = levels, torch.full((n_levels,), -math.log(n_levels), dtype=D64)
        kw: dict = {"levels": n_levels}
    else:
        optimum = NoiseAgnostic(TINY.double(), sigma_min=sigma_min, sigma_max=sigma_max, conditioning=conditioning)
        quad, log_pi = _log_uniform_rule(sigma_min, sigma_max, 96)
        kw = {}
    w = torch.ones_like(sig) if conditioning == "multiplicative" else sig**2
    f_star = optimum.field(x)
    oracle_err = _rel(_brute_force_field(x, quad, log_pi, conditioning), f_star, w)
    assert oracle_err < 1e-9, f"NoiseAgnostic differs from the float64 brute force by {oracle_err:.3g}"
    # the optimum of another weighting (lambda = 1 in score space): the test must tell them apart
    other = _rel(_brute_force_field(x, quad, log_pi, conditioning, a=0.0), f_star, w)

    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=64, depth=3), conditioning)
    untrained = _rel(model.field(x.float()).double().detach(), f_star, w)
    ema = fit(model, TINY.repeat(300, 1), TrainConfig(steps=steps, batch_size=batch, lr=3e-3, sigma_dist=sigma_dist,
                                                      sigma_min=sigma_min, sigma_max=sigma_max, **kw), progress=False)
    with torch.no_grad():
        err = _rel(ema.field(x.float()).double(), f_star, w)
    msg = f"{conditioning}: rel. error {err:.4f} (untrained {untrained:.3f}, other weighting's optimum {other:.3f})"
    print(msg)
    assert err < 0.1, msg
    assert err < 0.3 * other, msg
    assert untrained > 0.9, msg


def test_edm_net_approaches_empirical_denoiser() -> None:
    """An EDM-preconditioned MLP learns the empirical denoiser; error of the effective target F
    ``(D - c_skip x)/c_out`` (EDM's loss is |F - F*|^2), relative, at probes from the lognormal law."""
    x, sig = _probes(0.0, 0.0, log_normal=True)
    d_star = Empirical(TINY.double())(x, sig)
    sd = 0.5
    c_skip = (sd**2 / (sig**2 + sd**2))[:, None]
    c_out = (sig * sd / (sig**2 + sd**2).sqrt())[:, None]
    f_star = (d_star - c_skip * x) / c_out
    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=64, depth=3, cond=True, emb_channels=16), "edm")

    def error(m: torch.nn.Module) -> float:
        with torch.no_grad():
            d = m(x.float(), sig.float()).double()
        return _rel((d - c_skip * x) / c_out, f_star, torch.ones_like(sig))

    untrained = error(model)
    ema = fit(model, TINY.repeat(300, 1), TrainConfig(steps=2000, batch_size=256, lr=3e-3, sigma_dist="lognormal",
                                                      sigma_min=0.002, sigma_max=80.0), progress=False)
    err = error(ema)
    print(f"EDM: rel. error of F {err:.4f} (untrained {untrained:.3f})")
    assert err < 0.15 and untrained > 0.9, f"EDM: rel. error of F {err:.4f} (untrained {untrained:.3f})"


@pytest.mark.parametrize("conditioning", ["multiplicative", "unconditional", "edm"])
def test_loss_closed_forms(conditioning: str) -> None:
    """sigma2 weighting: |f + z|^2 (multiplicative), |sigma f + z|^2 (unconditional); edm: |F - F_target|^2
    with F_target = (x0 - c_skip x)/c_out (Karras et al. 2022, Eq. 8); per-dimension means, float64."""
    g = torch.Generator().manual_seed(0)
    net = MLP(3, hidden=16, depth=2, cond=conditioning == "edm").double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=D64))
    model = precondition(net, conditioning, sigma_data=0.5)
    x0, z = torch.randn(6, 3, generator=g, dtype=D64), torch.randn(6, 3, generator=g, dtype=D64)
    sigma = torch.logspace(-2, 1, 6, dtype=D64)
    x = x0 + sigma[:, None] * z
    got = denoising_loss(model, x0, sigma, z, "edm" if conditioning == "edm" else "sigma2").double()
    if conditioning == "edm":
        sd = 0.5
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        f = net(c_in[:, None] * x, sigma.log() / 4)
        expected = ((f - (x0 - c_skip[:, None] * x) / c_out[:, None]) ** 2).mean(1)
    else:
        f = net(x)
        scale = 1.0 if conditioning == "multiplicative" else sigma[:, None]
        expected = ((scale * f + z) ** 2).mean(1)
    err = float(((got - expected).abs() / expected).detach().max())
    assert err < 1e-5, f"{conditioning}: loss differs from its closed form by {err:.3g} (relative; float32 loss)"


def test_sigma_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200_000
    lu = SigmaDist("loguniform", sigma_min=0.01, sigma_max=10.0).sample(n, g)
    u = (lu.log() - math.log(0.01)) / math.log(1000.0)
    ks = float((torch.sort(u).values - (torch.arange(n, dtype=D64) + 0.5) / n).abs().max())
    assert ks < 1.63 / math.sqrt(n) and float(lu.min()) >= 0.01 and float(lu.max()) <= 10.0, f"loguniform KS {ks:.4g}"
    ln = SigmaDist("lognormal", sigma_min=0.002, sigma_max=80.0).sample(n, g).log()
    m, s = float(ln.mean()), float(ln.std())
    assert abs(m + 1.2) < 5 * 1.2 / math.sqrt(n) and abs(s - 1.2) < 0.01, f"lognormal log-mean {m:.4f}, log-std {s:.4f}"
    geo = SigmaDist("geometric", sigma_min=0.01, sigma_max=1.0, levels=5)
    levels = geo.levels
    assert levels is not None and torch.allclose(levels, torch.tensor([1.0, 10**-0.5, 0.1, 10**-1.5, 0.01], dtype=D64))
    draws = geo.sample(n, g)
    counts = torch.stack([(draws == lv).sum() for lv in levels]).double()
    assert int(counts.sum()) == n, "geometric draws off the levels"
    chi2 = float(((counts - n / 5) ** 2 / (n / 5)).sum())
    assert chi2 < 18.5, f"geometric level frequencies not uniform: chi2 {chi2:.2f} (4 dof, p=0.001 at 18.5)"


def test_ema_warmup_and_update() -> None:
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(80, 0.999) == pytest.approx(0.9)
    assert ema_decay_at(10**6, 0.999) == 0.999 and ema_decay_at(0, 0.999, warmup=False) == 0.999
    model = torch.nn.Linear(3, 2).double()
    ema = EMA(model, decay=0.99)
    ref = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = ema.update(model, step)
        ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, model.parameters())]
    for r, p in zip(ref, ema.module.parameters()):
        assert torch.allclose(r, p, rtol=0, atol=1e-14)


def _sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256) -> float:
    """Sliced 2-Wasserstein distance of two equal-size point sets (sorted projections)."""
    theta = torch.randn(n_proj, a.shape[1], generator=torch.Generator().manual_seed(0), dtype=D64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    pa, pb = torch.sort(a.double() @ theta.T, 0).values, torch.sort(b.double() @ theta.T, 0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def test_moons_multiplicative_mlp_samples_match_held_out_data() -> None:
    """Moons, multiplicative MLP (NCSNv2 / Kim), annealed Langevin sampling (NCSNv2 Algorithm 1).

    Annealed Langevin with step_lr = 0.3 sigma_min^2 (so alpha_i / sigma_i^2 = 0.3 at every level),
    20 geometric levels, 5 steps each. Threshold SW_2 < 0.2, and below 0.6x the SW_2 of the best
    Gaussian fit; untrained model (f = 0) as the failing reference.
    """
    from scoredyn.data import load as load_data
    from scoredyn.sample import annealed_langevin, noise, sigmas_geometric

    train = load_data("moons", n=2000, seed=0)
    test = load_data("moons", split="test", n=500, seed=0)
    sigma_min, sigma_max = 0.05, 5.0
    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=128, depth=3), "multiplicative")

    def sample(m: torch.nn.Module) -> torch.Tensor:
        x = sigma_max * noise(range(500), (2,))
        with torch.no_grad():
            return annealed_langevin(m, x, sigmas_geometric(20, sigma_min=sigma_min, sigma_max=sigma_max), seeds=range(500),
                                     n_steps_each=5, step_lr=0.3 * sigma_min**2)

    sw_untrained = _sliced_w2(sample(model), test)
    ema = fit(model, train, TrainConfig(steps=1500, batch_size=256, lr=3e-3, sigma_dist="loguniform", sigma_min=sigma_min,
                                        sigma_max=sigma_max), progress=False)
    sw = _sliced_w2(sample(ema), test)
    gauss = torch.distributions.MultivariateNormal(train.mean(0).double(), torch.cov(train.T.double()))
    torch.manual_seed(1)
    sw_gauss = _sliced_w2(gauss.sample((500,)), test)
    sw_floor = _sliced_w2(train[:500], test)
    msg = (f"SW_2(samples, held-out) = {sw:.4f}; Gaussian fit {sw_gauss:.4f}; train-vs-test floor "
           f"{sw_floor:.4f}; untrained {sw_untrained:.3f}")
    print(msg)
    assert sw < 0.2 and sw < 0.6 * sw_gauss, msg
    assert sw_untrained > 1.0, msg


# ----------------------------------------------------------------------------- checkpoints and bad input


def _tiny_run(out: Path, steps: int = 20, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=16, depth=2), "multiplicative")
    return fit(model, TINY.repeat(4, 1), TrainConfig(steps=steps, batch_size=8, lr=1e-3, sigma_dist="loguniform", sigma_min=0.05,
                                                     sigma_max=3.0, ckpt_every=10, log_every=5), out=out, progress=False, **kw)


def test_checkpoint_layout_and_load(tmp_path: Path) -> None:
    ema = _tiny_run(tmp_path)
    assert (tmp_path / "latest").read_text().strip() == "ckpt/step-000000020"
    ck = tmp_path / "ckpt" / "step-000000020"
    assert sorted(p.name for p in ck.iterdir()) == sorted(
        ["config.json", "model.safetensors", "ema.safetensors", "optim.safetensors", "rng.safetensors"])
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["version"] == 1 and cfg["step"] == 20 and cfg["model"]["net"] == "MLP" and cfg["data_shape"] == [2]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20] and all(math.isfinite(r["loss"]) for r in lines)
    loaded = load(tmp_path)
    x = torch.randn(9, 2)
    assert torch.equal(loaded(x, 0.4), ema(x, 0.4)) and torch.equal(loaded.field(x), ema.field(x))
    assert loaded.data_shape == (2,) and not loaded.training
    assert torch.equal(load(ck)(x, 0.4), loaded(x, 0.4))  # a checkpoint directory directly
    # a half-written checkpoint (killed while saving) is invisible and cleaned up on the next save
    import subprocess
    import sys

    from scoredyn._lock import pid_alive

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    assert not pid_alive(dead)  # a fixed PID such as 999 may belong to a live process on a busy machine
    stray = tmp_path / "ckpt" / f".tmp-step-000000030-{dead}"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"\x00" * 10)
    assert torch.equal(load(tmp_path)(x, 0.4), ema(x, 0.4))
    _tiny_run(tmp_path, steps=30)
    assert not stray.exists() and (tmp_path / "latest").read_text().strip() == "ckpt/step-000000030"
    # killed between the two renames that rewrite a step: the copy moved aside is restored, not deleted
    final = tmp_path / "ckpt" / "step-000000030"
    before = load(tmp_path)(x, 0.4)
    os.replace(final, tmp_path / "ckpt" / ".tmp-old-step-000000030-4242")
    assert torch.equal(load(tmp_path)(x, 0.4), before)
    assert final.is_dir() and not (tmp_path / "ckpt" / ".tmp-old-step-000000030-4242").exists()


def test_checkpoint_bad_input(tmp_path: Path) -> None:
    _tiny_run(tmp_path)
    ck = tmp_path / "ckpt" / "step-000000020"

    def fresh(name: str) -> Path:
        dst = tmp_path / name
        dst.mkdir()
        for f in ck.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        return dst

    truncated = fresh("truncated")
    data = (truncated / "ema.safetensors").read_bytes()
    (truncated / "ema.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load(truncated)
    flipped = fresh("flipped")
    data = bytearray((flipped / "ema.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (flipped / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load(flipped)
    for name, edit, match in [
        ("version", lambda c: c.update(version=99), "version 99"),
        ("netclass", lambda c: c["model"].update(net="Pickle"), "unknown network class"),
        ("kwargs", lambda c: c["model"]["net_kwargs"].update(hidden=32), "do not fit"),
        ("conditioning", lambda c: c["model"].update(conditioning="vp"), "unknown conditioning"),
    ]:
        d = fresh(name)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match):
            load(d)
    broken = fresh("badjson")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(broken)
    missing = fresh("missing")
    os.remove(missing / "optim.safetensors")
    with pytest.raises(FileNotFoundError, match="optim.safetensors"):
        load(missing)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load(tmp_path / "nowhere")
    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / "latest").write_text("ckpt/step-000000999\n")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load(tmp_path / "dangling")


def test_fit_bad_input(tmp_path: Path) -> None:
    model = precondition(MLP(2, hidden=8, depth=1), "multiplicative")
    ok = dict(steps=2, batch_size=4, lr=1e-3, sigma_dist="loguniform", sigma_min=0.1, sigma_max=1.0)
    nan_data = TINY.clone()
    nan_data[2, 1] = float("nan")
    cases = [
        (dict(data=nan_data), "NaN"),
        (dict(batch_size=6), r"batch_size \(6\) is larger than the data set \(5 points\)"),
        (dict(sigma_dist="uniform"), "geometric, loguniform, lognormal"),
        (dict(sigma_dist="geometric"), "needs levels"),
        (dict(weighting="snr"), "sigma2, edm"),
        (dict(sigma_min=2.0), "must not exceed"),
        (dict(lr=0.0), "lr"),
        (dict(steps=-1), "steps"),
        (dict(data=torch.zeros(5, 2, dtype=torch.long)), "floating point"),
        (dict(data="no-such-set"), "unknown data set"),
    ]
    for change, match in cases:
        args = {**ok, **change}
        data = args.pop("data", TINY)
        with pytest.raises(ValueError, match=match):
            fit(model, data, TrainConfig(**args), progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiplicative, unconditional, edm"):
        fit({"net": "MLP", "net_kwargs": {"dim": 2}, "conditioning": "ncsn"}, TINY, TrainConfig(**ok))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="denoiser from scoredyn.nets.precondition"):
        fit(MLP(2), TINY, TrainConfig(**ok))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TrainConfig"):
        fit(model, TINY, ok)  # type: ignore[arg-type]


def test_fit_from_spec_trains_a_unet(tmp_path: Path) -> None:
    """A spec dict is built with the seed; a small UNet on 8x8 images trains and reloads."""
    imgs = torch.randn(16, 1, 8, 8).clamp(-1, 1)
    spec = {"net": "UNet", "net_kwargs": {"channels": 1, "base": 8, "channel_mult": [1, 2], "num_blocks": 1},
            "conditioning": "edm"}
    ema = fit(spec, imgs, TrainConfig(steps=3, batch_size=4, lr=1e-3, sigma_dist="lognormal", sigma_min=0.002, sigma_max=80.0),
              out=tmp_path, progress=False)
    assert isinstance(ema.net, UNet) and ema.net.cond
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(load(tmp_path)(x, 1.0), ema(x, 1.0))


def test_train_config_round_trip_and_differences() -> None:
    c = TrainConfig(steps=3, batch_size=4, lr=1e-3, sigma_dist="geometric", sigma_min=0.1, sigma_max=1.0,
                    levels=(1.0, 0.5, 0.1), betas=[0.8, 0.99])
    d = json.loads(json.dumps(c.as_dict()))
    assert TrainConfig.from_dict(d) == c and d["levels"] == [1.0, 0.5, 0.1] and c.betas == (0.8, 0.99)
    assert c.differences(c.replace(lr=2e-3, seed=4, steps=9)) == {"lr": (1e-3, 2e-3), "seed": (0, 4)}  # steps may change
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['lr_max'\]"):
        TrainConfig.from_dict({**d, "lr_max": 1.0})
    with pytest.raises(ValueError, match=r"sigma_min \(2\) must not exceed sigma_max \(1\)"):
        c.replace(sigma_min=2.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got batch_size=0"):
        c.replace(batch_size=0)
    with pytest.raises(TypeError):
        TrainConfig(3, 4, 1e-3, "loguniform", 0.1, 1.0)  # type: ignore[misc]  # keyword-only
