"""Benchmark: ``scoredyn.dynamics.fixed_points`` time for d = 2, 64, 784.

Fields (float64, CPU unless --device):
* ``noise-agnostic``: Kim's optimum ``f*`` (NoiseAgnostic, multiplicative) of a training set, starts
  at training points plus ``0.5 sigma_min`` noise: the equilibria near the data (Kim Thm 4.4).
* ``mixture``: the score at ``sigma = 0.1`` of a 10-component GaussianMixture fitted to the same data
  (rank 16 plus isotropic for d > 2), starts at training points: modes and saddles.
Data: d = 2 the ``gmm2d`` toy, d = 64 scikit-learn digits, d = 784 MNIST from ../shared/data
(uniform noise when absent). ``auto`` picks dense Newton (torch.func Jacobian) for d <= 256 and
Jacobian-free Newton-Krylov above; ``newton-krylov`` rows at d = 64 and a ``newton`` row at d = 784
(mixture only at full size: dense Newton on ``f*`` needs 784 forward-mode passes over the training
set per iteration, about half an hour here) give the other method's time on the same problem. Times are medians of repeats (after a
warm-up call), for the solve plus the default spectrum, and for the solve alone (``eigs="none"``).

    OMP_NUM_THREADS=1 python bench/fixed_points.py --quick    # small, for development
    OMP_NUM_THREADS=1 python bench/fixed_points.py --write    # writes ## Dynamics of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import warnings

import torch

from _common import machine, publish, shared_data, timed
from scoredyn.analytic import GaussianMixture, NoiseAgnostic
from scoredyn.dynamics import fixed_points

SECTION = "Dynamics"
SIGMA_MIN = {2: 0.01, 64: 0.02, 784: 0.05}
SIGMA_MAX = {2: 10.0, 64: 20.0, 784: 80.0}


def load_data(d: int, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    from scoredyn.data import load

    if d == 2:
        return load("gmm2d", n=n, seed=seed).double(), "gmm2d toy"
    if d == 64:
        return load("digits", n=min(n, 1500), seed=seed).reshape(-1, 64).double(), "digits 8x8"
    root = shared_data()
    if root is not None:
        return load("mnist", root / "mnist", n=n, seed=seed).reshape(n, 784).double(), "MNIST"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g, dtype=torch.float64) * 2 - 1, "uniform noise (MNIST absent)"


def run(quick: bool, repeats: int, device: str) -> list[dict]:
    rows = []
    n_train = {2: 500, 64: 500, 784: 1000} if not quick else {2: 200, 64: 300, 784: 300}
    batch = 8 if not quick else 4
    for d in (2, 64, 784):
        data, source = load_data(d, n_train[d])
        data = data.to(device)
        g = torch.Generator().manual_seed(1)
        pick = torch.randperm(data.shape[0], generator=g)[:batch]
        fields = {}
        na = NoiseAgnostic(data, sigma_min=SIGMA_MIN[d], sigma_max=SIGMA_MAX[d], conditioning="multiplicative")
        x_na = data[pick] + 0.5 * SIGMA_MIN[d] * torch.randn(batch, d, generator=g, dtype=data.dtype).to(device)
        fields["noise-agnostic"] = (na.field, x_na)
        gmm = GaussianMixture.fit(data, 10, seed=0, rank=None if d == 2 else 16)
        fields["mixture"] = ((lambda x, m=gmm: m.score(x, 0.1)), data[pick].clone())
        for name, (field, x0) in fields.items():
            methods = ["auto"] + (["newton-krylov"] if d == 64 else [])
            if d == 784 and (name == "mixture" or quick):
                methods.append("newton")  # dense Newton on f* at d = 784 takes ~30 min at full size
            for method in methods:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    # a configuration whose warm-up call exceeds 10 s is timed once
                    t_all, times, fp = timed(lambda: fixed_points(field, x0, method=method), repeats, device, once_over=10.0)
                    t_solve = timed(lambda: fixed_points(field, x0, method=method, eigs="none"), repeats, device, once_over=10.0).median
                    reps = len(times)
                counts = fp.count()
                rows.append(
                    dict(
                        d=d, field=name, data=source, n_train=data.shape[0], batch=batch, method=fp.method,
                        asked=method, t_all=t_all, t_solve=t_solve, repeats=reps,
                        converged=float(fp.converged.double().mean()), n_iter=float(fp.n_iter.double().mean()),
                        n_flow=int(fp.n_flow.sum()), kinds=", ".join(f"{k} {v}" for k, v in counts.items()),
                        residual=float(fp.residual.max()),
                    )
                )
                r = rows[-1]
                print(
                    f"d={d:4d} {name:15s} {r['method']:14s} ({method:13s}) solve+eigs {t_all:8.3f} s  solve {t_solve:8.3f} s  "
                    f"conv {r['converged']:.2f}  iters {r['n_iter']:.1f}  flow {r['n_flow']}  [{r['kinds']}]",
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| d | field | data (N) | method | B | solve + eigs (s) | solve only (s) | per point (ms) | repeats | converged | "
        "mean iters | flow fallbacks | kinds | max residual |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['field']} | {r['data']} ({r['n_train']}) | {r['method']}{' (auto)' if r['asked'] == 'auto' else ''} | "
            f"{r['batch']} | {r['t_all']:.3f} | {r['t_solve']:.3f} | {1000 * r['t_all'] / r['batch']:.1f} | {r['repeats']} | "
            f"{r['converged']:.2f} | {r['n_iter']:.1f} | {r['n_flow']} | {r['kinds']} | {r['residual']:.1e} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    out = []
    for d, other in ((64, "newton-krylov"), (784, "newton")):
        for field in ("noise-agnostic", "mixture"):
            auto = [r for r in rows if r["d"] == d and r["field"] == field and r["asked"] == "auto"]
            alt = [r for r in rows if r["d"] == d and r["field"] == field and r["asked"] == other]
            if auto and alt:
                out.append(
                    f"- d = {d}, {field}: {other} / {auto[0]['method']} (auto) time = "
                    f"{alt[0]['t_all'] / auto[0]['t_all']:.2f} (solve + eigs), {alt[0]['t_solve'] / auto[0]['t_solve']:.2f} (solve only)"
                )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small training sets and batches")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## Dynamics)")
    args = p.parse_args()
    rows = run(args.quick, args.repeats, args.device)
    text = (
        f"Machine: {machine()}; device {args.device}; float64; medians of {args.repeats} repeats after a "
        f"warm-up call (a configuration whose warm-up exceeds 10 s is timed once: repeats 1).\n\n{table(rows)}\n\n{ratios(rows)}\n\n"
        "Noise-agnostic starts are training points plus 0.5 sigma_min noise (sigma_min = 0.01, 0.02, 0.05 and "
        "sigma_max = 10, 20, 80 for d = 2, 64, 784); mixture starts are training points (score of a 10-component "
        "fit at sigma = 0.1). NoiseAgnostic.field is not reverse-differentiable (in-place ops), so its dense "
        "Jacobians come from the forward-mode tier (d JVPs); the mixture uses torch.func.jacrev."
    )
    print()
    publish(SECTION, text, __file__, args.write)


if __name__ == "__main__":
    main()
