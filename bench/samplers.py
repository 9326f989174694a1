"""Benchmark: sampler accuracy against NFE on exact Gaussian-mixture scores, with and without
analytical teleportation, and the per-step overhead of the samplers themselves.

Problems: the 2-D ``gmm2d`` toy (8 components, scoredyn.data.gmm2d_model) and a d = 64 mixture
(8 components, rank-4 covariances plus 0.05 I). Grid: Karras et al. 2022 (rho = 7) from
sigma_max = 80 to sigma_min = 0.002 plus a final step to 0. Reference: the probability-flow ODE
solved by Dormand-Prince at rtol = atol = 1e-9 to sigma_min, then D(x, sigma_min) (what every grid
sampler does on its last step); its own error is estimated against rtol = 1e-7. Error: mean over
samples of |x - x_ref| (Euclidean). Teleportation: the moment-matched Gaussian of the mixture,
``with_teleport(sampler, gaussian, sigma_skip)`` on the same grid; "saved" is 1 - NFE / NFE',
NFE' being the NFE at which the same sampler without teleportation reaches the same error
(log-log interpolation over a sweep of grid sizes). Overhead: a denoiser that returns x.

    OMP_NUM_THREADS=1 python bench/samplers.py --quick     # small, for development
    OMP_NUM_THREADS=1 python bench/samplers.py --write     # writes ## Samplers in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

import torch

from _common import machine, publish, timed
from scoredyn.analytic.gaussian import Gaussian
from scoredyn.analytic.mixture import GaussianMixture
from scoredyn.data import gmm2d_model
from scoredyn.sample import (
    FIELD_SAMPLERS,
    SAMPLERS,
    CountNFE,
    dpmpp_2m,
    euler,
    heun,
    ode_adaptive,
    sigmas_geometric,
    sigmas_karras,
    unipc,
    with_teleport,
)

SECTION = "Samplers"
F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
NFES = (5, 10, 20, 50)
SKIPS = (20.0, 10.0, 5.0, 2.0)
SWEEP = (3, 4, 5, 6, 7, 8, 10, 12, 14, 17, 20, 24, 28, 33, 40, 48, 57, 68, 80, 96)


def _unipc3(denoiser, x, sigmas, **kw):
    return unipc(denoiser, x, sigmas, order=3, **kw)


_unipc3.__name__ = "unipc"
SOLVERS: dict[str, tuple[Callable, Callable[[int], int]]] = {
    # name -> (sampler, number of grid levels for a target NFE)
    "euler": (euler, lambda nfe: nfe),
    "heun": (heun, lambda nfe: (nfe + 1) // 2),  # 2 N - 1 evaluations on a grid ending in 0
    "dpmpp_2m": (dpmpp_2m, lambda nfe: nfe),
    "unipc_bh2_o2": (unipc, lambda nfe: nfe),
    "unipc_bh2_o3": (_unipc3, lambda nfe: nfe),
}


def mixture_64d(seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    k, d, r = 8, 64, 4
    means = 1.5 * torch.randn(k, d, generator=g, dtype=F64)
    basis = torch.linalg.qr(torch.randn(k, d, r, generator=g, dtype=F64))[0]
    lam = 0.5 + 1.5 * torch.rand(k, r, generator=g, dtype=F64)
    return GaussianMixture.from_eig(torch.full((k,), 1.0 / k, dtype=F64), means, basis, lam, torch.full((k,), 0.05, dtype=F64))


def moment_gaussian(gm: GaussianMixture) -> Gaussian:
    """The Gaussian with the mixture's mean and covariance."""
    w, mu, cov = gm.weights, gm.means, gm.covariance()
    m = (w[:, None] * mu).sum(0)
    c = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - m[:, None] * m[None]
    return Gaussian(m.reshape(gm.data_shape), 0.5 * (c + c.T))


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).reshape(x.shape[0], -1).norm(dim=1).mean())


def run(fn: Callable, gm, x: torch.Tensor, levels: int) -> tuple[torch.Tensor, int]:
    counted = CountNFE(gm)
    out = fn(counted, x, sigmas_karras(levels, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX))
    return out, counted.nfe


def nfe_for_error(curve: list[tuple[int, float]], target: float) -> Optional[float]:
    """The NFE at which the sweep first reaches ``target`` error (log-log interpolation); None if never."""
    for (n0, e0), (n1, e1) in zip(curve, curve[1:]):
        if e1 <= target < e0:
            t = math.log(e0 / target) / math.log(e0 / e1)
            return math.exp(math.log(n0) + t * math.log(n1 / n0))
    if curve and curve[0][1] <= target:
        return float(curve[0][0])
    return None


def accuracy(name: str, gm, n_samples: int, nfes, skips, sweep) -> tuple[list[str], dict]:
    gauss = moment_gaussian(gm)
    x = gm.sample(n_samples, sigma=SIGMA_MAX, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    ref, ref_nfe = ode_adaptive(gm, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=1e-9, atol=1e-9).as_tuple()
    ref = gm(ref, SIGMA_MIN)
    t_ref = time.perf_counter() - t0
    loose = ode_adaptive(gm, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=1e-7, atol=1e-7).x
    ref_err = error(gm(loose, SIGMA_MIN), ref)
    lines = [
        f"**{name}** (d = {gm.dim}, {n_samples} samples; reference: dopri5 rtol = atol = 1e-9, {ref_nfe} NFE, "
        f"{t_ref:.1f} s; its distance to the rtol = 1e-7 solution {ref_err:.1e})",
        "",
        "| sampler | NFE | error | " + " | ".join(f"teleport to {s:g}: NFE, error (saved)" for s in skips) + " |",
        "|---|---|---|" + "---|" * len(skips),
    ]
    summary: dict = {}
    orders = []
    for sname, (fn, levels_for) in SOLVERS.items():
        at: dict[int, tuple[int, float]] = {}
        curve = []
        for n in sweep:
            out, nfe = run(fn, gm, x, levels_for(n))
            curve.append((nfe, error(out, ref)))
        curve = sorted(set(curve))
        for target in nfes:
            out, nfe = run(fn, gm, x, levels_for(target))
            at[target] = (nfe, error(out, ref))
            row = [sname, str(nfe), f"{at[target][1]:.2e}"]
            for skip in skips:
                tel, nfe_t = run(with_teleport(fn, gauss, skip), gm, x, levels_for(target))
                err_t = error(tel, ref)
                equiv = nfe_for_error(curve, err_t)
                saved = "(>" + f"{1 - nfe_t / curve[-1][0]:.0%})" if equiv is None else f"({1 - nfe_t / equiv:+.0%})"
                if target >= 10:
                    summary.setdefault((sname, skip), []).append(None if equiv is None else 1 - nfe_t / equiv)
                row.append(f"{nfe_t}, {err_t:.2e} {saved}")
            lines.append("| " + " | ".join(row) + " |")
        if 20 in at and 50 in at:
            (n0, e0), (n1, e1) = at[20], at[50]
            orders.append(f"{sname} {math.log(e0 / e1) / math.log(n1 / n0):.2f}")
    adaptive = []
    for tol in (1e-3, 1e-5):
        out, nfe = ode_adaptive(gm, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=tol, atol=tol).as_tuple()
        adaptive.append(f"dopri5 rtol = atol = {tol:g}: {nfe + 1} NFE, error {error(gm(out, SIGMA_MIN), ref):.2e}")
    lines += ["", "Observed order log(e_20 / e_50) / log(NFE_50 / NFE_20): " + ", ".join(orders) + "."]
    lines += ["", "Adaptive for comparison: " + "; ".join(adaptive) + "."]
    return lines, summary


def load_kdiffusion(path: Optional[str]) -> Optional[ModuleType]:
    """k-diffusion's ``sampling.py`` loaded on its own (its package ``__init__`` imports torchvision):
    ``path`` is that file or a k-diffusion checkout (default: ``$KDIFFUSION_SAMPLING``). The file is
    copied into a temporary package beside a two-line ``utils.append_dims``; ``torchsde`` is stubbed
    when absent (only its Brownian tree needs it, and the benchmark passes a noise sampler). None if not given."""
    path = path or os.environ.get("KDIFFUSION_SAMPLING")
    if not path:
        return None
    src = Path(path)
    src = src / "k_diffusion" / "sampling.py" if src.is_dir() else src
    if not src.is_file():
        raise SystemExit(f"--kdiffusion: {src} is not k-diffusion's sampling.py")
    pkg = Path(tempfile.mkdtemp(prefix="kdiff_")) / "kdiff_standalone"
    pkg.mkdir()
    shutil.copy(src, pkg / "sampling.py")
    (pkg / "__init__.py").write_text("")
    (pkg / "utils.py").write_text("def append_dims(x, target_dims):\n    return x[(...,) + (None,) * (target_dims - x.ndim)]\n")
    sys.modules.setdefault("torchsde", ModuleType("torchsde"))
    sys.path.insert(0, str(pkg.parent))
    module = importlib.import_module("kdiff_standalone.sampling")
    module.SOURCE = f"{src.name}, sha256 {hashlib.sha256(src.read_bytes()).hexdigest()[:12]}"  # type: ignore[attr-defined]
    return module


NEW_SAMPLERS = (  # (row label, scoredyn name, k-diffusion function, options, evaluations per step)
    ("euler_ancestral", "euler_ancestral", "sample_euler_ancestral", {}, 1),
    ("dpm_2", "dpm_2", "sample_dpm_2", {}, 2),
    ("dpm_2_ancestral", "dpm_2_ancestral", "sample_dpm_2_ancestral", {}, 2),
    ("lms (order 4)", "lms", "sample_lms", {}, 1),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}, 2),
    ("dpmpp_sde", "dpmpp_sde", "sample_dpmpp_sde", {}, 2),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}, 1),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}, 1),
    ("ddim (eta = 0.5)", "ddim", "sample_euler_ancestral", {"eta": 0.5}, 1),
)
"""The k-diffusion samplers, each timed beside k-diffusion's own function on the same grid and denoiser
(stochastic ones with the same ``randn_like`` noise sampler; ddim against ``sample_euler_ancestral``, its
algorithm without the clip)."""


def overhead(shape: tuple[int, ...], batch: int, steps: int, repeats: int, kd: Optional[ModuleType]) -> list[str]:
    """Microseconds per step with a denoiser that returns x (the sampler's own cost), beside k-diffusion's
    function for the same algorithm on the same grid, denoiser and noise where it has one."""
    x = torch.randn(batch, *shape)
    seeds = list(range(batch))
    identity = lambda y, s: y  # noqa: E731
    randn = lambda s, s_next: torch.randn_like(x)  # noqa: E731
    grid = sigmas_karras(steps, sigma_min=0.01, sigma_max=10.0)
    levels = sigmas_geometric(steps, sigma_min=0.01, sigma_max=10.0)
    Case = tuple[Callable[[], torch.Tensor], Optional[Callable[[], torch.Tensor]], int]

    def kd_fn(name: str, **opts: object) -> Optional[Callable[[], torch.Tensor]]:
        return None if kd is None else lambda: getattr(kd, name)(identity, x, grid, disable=True, **opts)

    cases: dict[str, Case] = {
        "bare loop (x + c (x - D), no checks)": (lambda: _bare(x, grid), None, 1),
        "euler": (lambda: SAMPLERS["euler"](identity, x, grid), kd_fn("sample_euler"), 1),
        "heun": (lambda: SAMPLERS["heun"](identity, x, grid), kd_fn("sample_heun"), 2),
        "heun, churn + seeds": (lambda: SAMPLERS["heun"](identity, x, grid, s_churn=10.0, seeds=seeds), None, 2),
        "dpmpp_2m": (lambda: SAMPLERS["dpmpp_2m"](identity, x, grid), kd_fn("sample_dpmpp_2m"), 1),
        "unipc (bh2, order 2)": (lambda: SAMPLERS["unipc"](identity, x, grid), None, 1),
        "unipc (bh2, order 3)": (lambda: SAMPLERS["unipc"](identity, x, grid, order=3), None, 1),
        "euler_maruyama, seeds": (lambda: SAMPLERS["euler_maruyama"](identity, x, grid, seeds=seeds), None, 1),
        "euler_maruyama, global RNG": (lambda: SAMPLERS["euler_maruyama"](identity, x, grid), None, 1),
        "annealed_langevin (T = 1), seeds": (lambda: SAMPLERS["annealed_langevin"](
            identity, x, levels, n_steps_each=1, step_lr=1e-5, seeds=seeds, denoise=False), None, 1),
        "unconditional_ode": (lambda: FIELD_SAMPLERS["unconditional_ode"](lambda y: y, x, grid), None, 1),
    }
    for label, name, kd_name, opts, evals in NEW_SAMPLERS:
        extra = dict(opts, noise_sampler=randn) if "noise_sampler" in inspect.signature(SAMPLERS[name]).parameters else dict(opts)
        cases[label] = ((lambda name=name, extra=extra: SAMPLERS[name](identity, x, grid, **extra)), kd_fn(kd_name, **extra), evals)
    cases[f"{NEW_SAMPLERS[0][0]}, seeds"] = (lambda: SAMPLERS["euler_ancestral"](identity, x, grid, seeds=seeds), None, 1)
    lines = []
    for label, (call, ref_call, evals) in cases.items():
        us = timed(call, repeats).median / steps * 1e6
        if ref_call is None:
            lines.append(f"| {label} | {us:.1f} | {us / evals:.1f} | | |")
        else:
            ref = timed(ref_call, repeats).median / steps * 1e6
            lines.append(f"| {label} | {us:.1f} | {us / evals:.1f} | {ref:.1f} | {us / ref:.2f} |")
    return lines


def _bare(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    sig = grid.tolist()
    for i in range(len(sig) - 1):
        d = x
        x = x + (x - d) * ((sig[i + 1] - sig[i]) / sig[i]) if sig[i + 1] > 0 else d
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and grid sizes, for development")
    p.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md (## Samplers)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kdiffusion", default=None, help="k-diffusion's sampling.py or checkout, timed beside the k-diffusion "
                   "samplers (default: $KDIFFUSION_SAMPLING; without it that column is n/a)")
    p.add_argument("--only-overhead", action="store_true", help="skip the accuracy tables")
    args = p.parse_args()
    n2, n64 = (200, 64) if args.quick else (1000, 256)
    sweep = SWEEP[::3] if args.quick else SWEEP
    t0 = time.perf_counter()
    out = [f"Machine: {machine()}.", ""]
    summaries = {}
    kd = load_kdiffusion(args.kdiffusion)
    problems = () if args.only_overhead else (("gmm2d", gmm2d_model(F64), n2), ("mixture d = 64", mixture_64d(), n64))
    for name, gm, n in problems:
        lines, summaries[name] = accuracy(name, gm, n, NFES, SKIPS, sweep)
        out += lines + [""]
    if problems:
        out += ["Median NFE saved at equal error by teleportation (over the NFE targets 10, 20, 50 where it is defined):", ""]
        out += ["| problem | sampler | " + " | ".join(f"to {s:g}" for s in SKIPS) + " |", "|---|---|" + "---|" * len(SKIPS)]
    for name, summ in summaries.items():
        for sname in SOLVERS:
            cells = []
            for s in SKIPS:
                vals = [v for v in summ[(sname, s)] if v is not None]
                cells.append(f"{statistics.median(vals):+.0%}" if vals else "n/a")
            out.append(f"| {name} | {sname} | " + " | ".join(cells) + " |")
    for name, summ in summaries.items():
        meets = [f"{s:g}" for s in SKIPS if all(
            statistics.median([v for v in summ[(sn, s)] if v is not None] or [-1.0]) >= 0.2 for sn in SOLVERS)]
        out.append(f"\n{name}: every sampler saves >= 20% NFE at equal error when teleporting to sigma in "
                   f"{{{', '.join(meets) or 'none'}}}.")
    out += ["", "Per-step overhead of the sampler itself (denoiser returns x; 200 steps; median of "
            f"{args.repeats}; microseconds; the bare loop is the floor: one axpy per step, no checks; on a "
            "shared machine compare rows of one table only). k-diffusion: its own function for the same "
            "algorithm on the same grid, denoiser and noise sampler (sampling.py loaded standalone: "
            f"{kd.SOURCE if kd else 'not given'}); ratio = scoredyn / k-diffusion, goal <= 1.2; ddim is timed "
            "against sample_euler_ancestral (the same algorithm without the clip):", ""]
    for shape, batch in (((2,), 64), ((3, 32, 32), 64)):
        out += [f"| batch {batch} x {shape} | us / step | us / evaluation | k-diffusion us / step | ratio |", "|---|---|---|---|---|"]
        out += overhead(shape, batch, 200, args.repeats, kd) + [""]
    out.append(f"Total benchmark time {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(out)
    publish(SECTION, text, __file__, args.write)


if __name__ == "__main__":
    main()
