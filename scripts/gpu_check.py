"""The GPU check (issue 16): every CUDA path of the project run once, and a GPU section for bench/RESULTS.md.

On a machine with CUDA (``make gpu-check``; about 8 minutes on one H100) it runs, each stage in its own
process with its own time limit, so that one failure does not hide the rest:

1. ``tests``: the device-parametrised tests on CUDA (``pytest -k cuda``);
2. ``analytic``: ``bench/analytic.py``'s rate-vs-sigma sweep on the GPU, float32 with TF32 matmuls off
   and on, the kernel's rate against the GPU's own two products, and the error against a float64
   model (the accuracy cost of TF32); also at B = 2048;
3. ``sampler``: Heun (EDM) sampling with ``Empirical`` on the GPU, time per step, and the samples
   compared with the CPU's from the same seeds (samples depend on their seeds, not on the device);
4. ``train``: the MNIST-size UNet trained by ``fit`` with bf16 autocast and in float32 (steps/s);
5. ``study``: a smoke run of the ``--full`` smoothing study (MNIST, UNet) with a fixed, small amount
   of work (fewer samples, temperatures and training steps; not a time budget).

It writes ``OUT/gpu_section.md`` (stage table plus each stage's report) and ``OUT/<stage>.log``; with
``--write`` the section also becomes ``## GPU check`` of ``bench/RESULTS.md``. Exit status 0 when every
stage passed, 1 otherwise; without CUDA it says so and exits 0.

    python scripts/gpu_check.py                           # on a CUDA machine
    python scripts/gpu_check.py --device cpu --dry        # every stage, tiny sizes, on the CPU (development)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0  # the whole check must fit in 8 minutes on one H100


@dataclass
class Stage:
    """One step of the check: a command line (argv after ``python``) and its time limit."""

    name: str
    argv: list[str]
    timeout_s: float
    what: str
    ok_codes: tuple[int, ...] = (0,)
    status: str = "not run"
    seconds: float = 0.0
    output: str = field(default="", repr=False)


SAMPLER = r"""
import sys, time, torch
from scoredyn.analytic import Empirical
from scoredyn.sample import heun, noise, sigmas_karras
dev, n, b, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
data = torch.rand(n, 784, generator=g) * 2 - 1
grid = sigmas_karras(steps, sigma_min=0.002, sigma_max=80.0)
seeds = list(range(b))
x0 = 80.0 * noise(seeds, (784,))
def run(device):
    model = Empirical(data.to(device))
    out = heun(model, x0.to(device), grid.to(device), seeds=seeds)
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = heun(model, x0.to(device), grid.to(device), seeds=seeds)
    if device != "cpu":
        torch.cuda.synchronize()
    return out.cpu(), time.perf_counter() - t0
ref, t_cpu = run("cpu")
out, t_dev = run(dev)
err = float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())
nfe = 2 * steps - 1
print(f"| Heun (EDM), Empirical N={n} d=784, B={b}, {steps} steps | {dev} | {t_dev / nfe * 1e3:.2f} ms/NFE | "
      f"cpu {t_cpu / nfe * 1e3:.2f} ms/NFE | max rel. difference {dev} vs cpu samples {err:.2e} |")
assert torch.isfinite(out).all(), "non-finite samples"
assert err < 1e-3, f"{dev} samples differ from the cpu samples of the same seeds by {err:.2e}"
"""

TRAIN = r"""
import json, statistics, sys, tempfile, torch
from pathlib import Path
from scoredyn.nets import UNet, precondition
from scoredyn.train import TrainConfig, fit
dev, steps, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
imgs = torch.rand(1024, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
rates = {}
for bf16 in ([True, False] if dev != "cpu" else [False]):
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = TrainConfig(steps=steps, batch_size=128, lr=2e-4, sigma_dist="lognormal", sigma_min=0.002,
                             sigma_max=80.0, warmup=10, ckpt_every=10**9, log_every=window, bf16=bf16)
        fit(precondition(UNet(1), "multiplicative"), imgs, config, device=dev, out=tmp, progress=False)
        its = [json.loads(s)["it_s"] for s in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates["bf16" if bf16 else "float32"] = statistics.median(its[1:] or its)
for k, v in rates.items():
    print(f"| MNIST UNet (multiplicative), batch 128 | {dev} {k} | {v:.2f} steps/s |")
if len(rates) == 2:
    print(f"bf16 / float32 steps/s: {rates['bf16'] / rates['float32']:.2f} (target >= 2 on an H100)")
"""

STUDY = r"""
import sys, time
from dataclasses import replace
from pathlib import Path
from scoredyn.studies import run_studies
from scoredyn.studies.config import preset, with_overrides
dev, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from scoredyn.data import shared_data_dir
cfg = with_overrides(preset(mode), device=dev)
s = cfg.smoothing
if mode == "full":  # the full configuration (MNIST, UNet) with a fixed small amount of work
    s = replace(s, n_train=1000, n_heldout=500, n_samples=128, heun_steps=20, temperatures=s.temperatures[:3],
                sigma_cs=s.sigma_cs[:2], fid=False, n_levels_unconditional=10, net=replace(s.net, steps=300))
if s.data == "mnist" and (shared_data_dir() is None or not (shared_data_dir() / "mnist").is_dir()):
    print("MNIST files absent (../shared/data/mnist): the smoke stage uses digits")
    s = replace(s, data="digits")
cfg = replace(cfg, smoothing=s)
t0 = time.perf_counter()
res = run_studies(["smoothing"], cfg, out, progress=False, reuse=False, log=print)
print(f"smoothing study ({mode} configuration, reduced work) on {dev}: {time.perf_counter() - t0:.0f} s; report in {out}")
"""


def stages(dev: str, dry: bool, out: Path) -> list[Stage]:
    """The stages for ``dev``; ``dry``: tiny sizes, and the tests' ``cpu`` variants instead of ``cuda``."""
    py = sys.executable
    bench = str(ROOT / "bench" / "analytic.py")
    if dry:
        sweep = ["--n", "1500", "--b", "16", "--repeats", "1", "--sigmas", "0.03,5", "--datasets", "gauss"]
        wide = sweep
    else:
        sweep = ["--n", "60000", "--b", "256", "--repeats", "5", "--sigmas", "0.002,0.03,0.2,1,5,80", "--datasets", "mnist,gauss"]
        wide = ["--n", "60000", "--b", "2048", "--repeats", "5", "--sigmas", "0.03,1,80", "--datasets", "gauss"]
    common = ["--part", "sweep", "--device", dev, "--accuracy"]
    test_k = "cpu" if dry else "cuda"
    test_files = [str(ROOT / "tests" / "test_kernel.py")] if dry else [str(ROOT / "tests")]
    return [
        Stage("tests", [py, "-m", "pytest", *test_files, "-k", test_k, "-q", "-rs", "-p", "no:cacheprovider"], 120,
              f"device-parametrised tests (-k {test_k})", ok_codes=(0, 5)),
        Stage("analytic", [py, bench, *common, *sweep], 55, "kernel rate vs the GPU's two products, float32, TF32 off"),
        Stage("analytic-tf32", [py, bench, *common, "--tf32", *sweep], 50, "the same with TF32 matmuls"),
        Stage("analytic-b2048", [py, bench, *common, *wide], 35, "B = 2048 queries, TF32 off"),
        Stage("sampler", [py, "-c", SAMPLER, dev, *(["500", "8", "6"] if dry else ["20000", "256", "18"])], 40,
              "Heun sampling with Empirical: time and device-vs-CPU samples"),
        Stage("train", [py, "-c", TRAIN, dev, *(["4", "2"] if dry else ["120", "20"])], 60, "UNet training, bf16 vs float32"),
        Stage("study", [py, "-c", STUDY, dev, "tiny" if dry else "full", str(out / "study")], 110,
              "smoothing study, --full configuration with reduced work"),
    ]


def run_stage(stage: Stage, env: dict[str, str], log: Path, left: float) -> None:
    """Run one stage (at most ``min(timeout, left)`` seconds); record status, time and output."""
    limit = min(stage.timeout_s, left)
    if limit < 5:
        stage.status = "skipped (8-minute budget spent)"
        return
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(stage.argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        stage.output = proc.stdout + ("\n" + proc.stderr if proc.returncode not in stage.ok_codes else "")
        stage.status = "ok" if proc.returncode in stage.ok_codes else f"FAILED (exit {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        stage.output = out + "\n" + err
        stage.status = f"FAILED (over its {limit:.0f} s limit)"
    stage.seconds = time.perf_counter() - t0
    log.write_text(stage.output)


def report(done: list[Stage], device: str, dry: bool, total: float) -> str:
    """The GPU section: the stage table, then each stage's output (its tables and summary lines)."""
    lines = [f"Device: {device}{'; --dry (tiny sizes: the numbers mean nothing)' if dry else ''}; "
             f"total {total:.0f} s.", "", "| stage | what | status | seconds |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.what} | {s.status} | {s.seconds:.0f} |" for s in done]
    for s in done:
        if not s.output.strip():
            continue
        tail = "\n".join(ln for ln in s.output.strip().splitlines()[-40:] if ln.strip() != "```")
        lines += ["", f"### {s.name}", "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None, runner: Callable[[Stage, dict[str, str], Path, float], None] = run_stage) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --dry")
    p.add_argument("--dry", action="store_true", help="tiny sizes, the tests' cpu variants: exercises every stage without a GPU")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="folder for gpu_section.md and the logs")
    p.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    p.add_argument("--write", action="store_true", help="also make the section '## GPU check' of bench/RESULTS.md")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check")
        return 0
    if args.device == "cpu" and not args.dry:
        p.error("--device cpu is for development only; add --dry")
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    todo = stages(args.device, args.dry, args.out)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        unknown = wanted - {s.name for s in todo}
        if unknown:
            p.error(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(s.name for s in todo)}")
        todo = [s for s in todo if s.name in wanted]
    t0 = time.perf_counter()
    for stage in todo:
        print(f"gpu-check: {stage.name}: {stage.what} ...", flush=True)
        runner(stage, env, args.out / f"{stage.name}.log", BUDGET_S - (time.perf_counter() - t0))
        print(f"gpu-check: {stage.name}: {stage.status} in {stage.seconds:.0f} s", flush=True)
        if not stage.status.startswith("ok"):
            print(textwrap.indent("\n".join(stage.output.strip().splitlines()[-15:]), "    "), flush=True)
    text = report(todo, name, args.dry, time.perf_counter() - t0)
    section = args.out / "gpu_section.md"
    tmp = section.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, section)
    print(f"gpu-check: section written to {section}")
    if args.write:
        sys.path.insert(0, str(ROOT / "bench"))
        from _common import write_section

        write_section("GPU check", text, __file__)
    return 0 if all(s.status == "ok" for s in todo) else 1


if __name__ == "__main__":
    sys.exit(main())
