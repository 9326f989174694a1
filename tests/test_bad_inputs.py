"""A catalogue of bad inputs and faults, tried as a new user would (issue 15).

Each case asserts a clear message (what was wrong and what is expected) or a correct result. The
cases are grouped by category, one parametrised test per category, so that

    pytest tests/test_bad_inputs.py --collect-only -q | sed 's/\\[.*//' | sort | uniq -c

gives the count per category (``test_catalogue_size`` checks the total). CLI cases run in process
(``scoredyn.cli.main``) and check: exit code 2, exactly one line on stderr, no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from scoredyn import analytic, data, dynamics
from scoredyn._lock import FolderBusy, acquire_folder, pid_alive
from scoredyn.cli import main
from scoredyn.nets import MLP, precondition
from scoredyn.sample import SAMPLERS
from scoredyn.train import checkpoint as ckpt_io
from scoredyn.train import TrainConfig, fit
from scoredyn.train.divergence import DivergenceMonitor, TrainingDiverged

D64 = torch.float64
SPEC = {"net": "MLP", "net_kwargs": {"dim": 2, "hidden": 16, "depth": 2}, "conditioning": "multiplicative"}
FIT = dict(steps=4, batch_size=16, lr=1e-3, sigma_dist="loguniform", sigma_min=0.01, sigma_max=3.0, ckpt_every=2,
           log_every=2, progress=False)
TRAIN = ["train", "--data", "moons", "--n", "64", "--steps", "4", "--batch-size", "16", "--hidden", "16", "--depth",
         "2", "--ckpt-every", "2", "--log-every", "2", "--no-progress"]


def _moons(n: int = 64) -> torch.Tensor:
    return data.load("moons", n=n)


RUN_ARGS = ("out", "resume", "overwrite", "device", "progress", "data_root", "data_n", "on_checkpoint")


def _train(model: Any, x: Any, **kw: Any) -> torch.nn.Module:
    """``fit`` with keyword arguments split into the TrainConfig and the run's own."""
    run = {k: kw.pop(k) for k in RUN_ARGS if k in kw}
    return fit(model, x, TrainConfig(**kw), **run)


def _fit(out: Path, **kw: Any) -> torch.nn.Module:
    return _train(dict(SPEC), _moons(), out=out, **{**FIT, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (4 steps, checkpoints at 2 and 4) made by the CLI."""
    out = tmp_path_factory.mktemp("run") / "moons"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str) -> str:
    """Run the CLI and check for one clear error line matching ``pattern``; returns it."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit code {rc} for {argv}; stderr: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {err}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    return lines[0]


# ------------------------------------------------------------------------------------------ API: data
API_DATA: list[tuple[str, Callable[[], Any], type, str]] = [
    ("unknown-name", lambda: data.load("moonz"), ValueError, r"unknown data set 'moonz'; known: moons"),
    ("toy-with-root", lambda: data.load("moons", root="/tmp"), ValueError, r"generated, not read from disk.*expected None"),
    ("npz-without-root", lambda: data.load("npz"), ValueError, r"load\('npz'\) needs root=<path to a .npz or .npy file>"),
    ("npz-missing-file", lambda: data.load("npz", root="/nonexistent/x.npz"), FileNotFoundError, r"does not exist; expected a .npz or .npy"),
    ("npz-root-is-directory", lambda: data.load("npz", root="/tmp"), ValueError, r"is a directory; expected a .npz or .npy file"),
    ("size-not-folder", lambda: data.load("moons", size=8), ValueError, r"size is only supported by 'folder'"),
    ("mmap-not-npz", lambda: data.load("moons", mmap=True), ValueError, r"mmap is only supported by 'npz'"),
    ("labels-of-toy", lambda: data.load_labeled("moons"), ValueError, r"has no labels; labeled data sets"),
    ("n-too-large-digits", lambda: data.load("digits", n=10**6), ValueError, r"n=1000000 exceeds the 1500 digits train images available; expected 1 <= n <= 1500"),
]


@pytest.mark.parametrize("name,call,exc,pattern", API_DATA, ids=[c[0] for c in API_DATA])
def test_api_data(name: str, call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------------------ API: analytic models
_P = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=D64)
_EMP = analytic.Empirical(_P)
_GMM0 = analytic.GaussianMixture(torch.tensor([1.0], dtype=D64), torch.zeros(1, 2, dtype=D64), torch.tensor([0.5], dtype=D64))


def _grad_of(field: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    z = _P[:2].clone().requires_grad_(True)
    return torch.autograd.grad(field(z).sum(), z)[0]


API_ANALYTIC: list[tuple[str, Callable[[], Any], type, str]] = [
    ("temperature-zero", lambda: analytic.Empirical(_P, temperature=0.0), ValueError, r"temperature must be a positive"),
    ("temperature-string", lambda: analytic.Empirical(_P, temperature="hot"), ValueError, r"temperature must be a positive float or a callable"),
    ("top-k-zero", lambda: analytic.Empirical(_P, top_k=0), ValueError, r"top_k must be a positive int"),
    ("chunk-negative", lambda: analytic.Empirical(_P, chunk_size=-3), ValueError, r"chunk_size must be a positive int"),
    ("data-1d", lambda: analytic.Empirical(_P[:, 0]), ValueError, r"shape \(N, \*data_shape\)"),
    ("data-nan", lambda: analytic.Empirical(torch.tensor([[0.0, float("nan")]])), ValueError, r"data contains 1 NaN/Inf value\(s\) out of 2; expected finite values"),
    ("data-int", lambda: analytic.Empirical(torch.ones(3, 2, dtype=torch.long)), ValueError, r"data must be floating point, got dtype torch.int64"),
    ("data-empty", lambda: analytic.Empirical(torch.empty(0, 2)), ValueError, r"data has 0 point\(s\); expected at least 1"),
    ("device-unknown", lambda: analytic.Empirical(_P.numpy(), device="tpu9"), ValueError, r"device='tpu9' is not a torch device.*expected e.g. 'cpu'"),
    ("device-cuda-missing", lambda: analytic.Empirical(_P.numpy(), device="cuda:77"), ValueError, r"device='cuda:77' but (CUDA is not available|this machine has)"),
    ("noise-agnostic-device-cuda-missing", lambda: analytic.NoiseAgnostic(_P.numpy(), sigma_min=0.01, sigma_max=1.0, device="cuda:77"), ValueError, r"device='cuda:77' but"),
    ("device-differs-from-tensor", lambda: analytic.Empirical(_P, device="meta"), ValueError, r"device=meta but data is on cpu"),
    ("query-wrong-dim", lambda: _EMP(torch.zeros(3, 5, dtype=D64), 0.1), ValueError, r"x has shape \(3, 5\); expected \(B, 2\) to match the data shape"),
    ("query-nan", lambda: _EMP(torch.full((1, 2), float("nan"), dtype=D64), 0.1), ValueError, r"x contains 2 NaN/Inf value\(s\) out of 2; expected finite"),
    ("sigma-negative", lambda: _EMP(torch.zeros(1, 2, dtype=D64), -1.0), ValueError, r"sigma must be > 0, got min -1"),
    ("sigma-wrong-length", lambda: _EMP(torch.zeros(3, 2, dtype=D64), torch.ones(2)), ValueError, r"sigma has shape \(2,\); expected a float, a 0-d tensor or shape \(3,\)"),
    ("tiny-sigma-float32-overflow", lambda: analytic.Empirical(_P.float() * 100)(torch.full((1, 2), 300.0), 1e-30), ValueError, r"NaN/Inf.*float64 data or a larger sigma"),
    ("na-conditioning", lambda: analytic.NoiseAgnostic(_P, sigma_min=0.01, sigma_max=1.0, conditioning="edm"), ValueError, r"conditioning must be one of"),
    ("na-inverted-range", lambda: analytic.NoiseAgnostic(_P, sigma_min=1.0, sigma_max=0.01), ValueError, r"sigma_min \(1\) must be below sigma_max \(0.01\)"),
    ("na-missing-range", lambda: analytic.NoiseAgnostic(_P), ValueError, r"sigma_min and sigma_max are required"),
    ("na-levels-not-bracketed", lambda: analytic.NoiseAgnostic(_P, sigma_min=0.5, levels=[0.1, 1.0]), ValueError, r"does not bracket the levels"),
    ("na-levels-negative", lambda: analytic.NoiseAgnostic(_P, levels=[-1.0, 1.0]), ValueError, r"levels must be finite and > 0"),
    ("na-n-quad-with-levels", lambda: analytic.NoiseAgnostic(_P, levels=[0.1, 1.0], n_quad=8), ValueError, r"n_quad applies to the log-uniform"),
    ("empirical-backward", lambda: _EMP(_P[:2].clone().requires_grad_(True), 0.3).sum().backward(), RuntimeError, r"Empirical does not support reverse-mode autograd.*forward mode"),
    ("noise-agnostic-backward", lambda: analytic.NoiseAgnostic(_P, sigma_min=0.01, sigma_max=2.0).field(_P[:2].clone().requires_grad_(True)).sum().backward(), RuntimeError, r"NoiseAgnostic does not support reverse-mode autograd.*scoredyn.dynamics.jacobian"),
    ("empirical-autograd-grad", lambda: _grad_of(lambda z: _EMP.score(z, 0.3)), RuntimeError, r"Empirical does not support reverse-mode autograd"),
]


@pytest.mark.parametrize("name,call,exc,pattern", API_ANALYTIC, ids=[c[0] for c in API_ANALYTIC])
def test_api_analytic(name: str, call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------------------ API: samplers
_X = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=D64)
_GRID = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=D64)

API_SAMPLE: list[tuple[str, Callable[[], Any], type, str]] = [
    ("ascending-grid", lambda: SAMPLERS["euler_maruyama"](_EMP, _X, torch.tensor([0.1, 1.0])), ValueError, r"sigmas must be strictly descending \(only the deterministic samplers invert: sample.invert\); sigmas\[0\] = 0.1 <= sigmas\[1\] = 1"),
    ("non-monotone-grid", lambda: SAMPLERS["euler"](_EMP, _X, torch.tensor([0.1, 1.0, 0.5])), ValueError, r"sigmas must be strictly descending \(sampling\) or strictly ascending \(inversion\); sigmas\[1\] = 1 >= sigmas\[2\] = 0.5"),
    ("grid-nan", lambda: SAMPLERS["euler"](_EMP, _X, torch.tensor([1.0, float("nan")])), ValueError, r"NaN/Inf at index 1"),
    ("grid-negative", lambda: SAMPLERS["heun"](_EMP, _X, [1.0, -0.5]), ValueError, r"negative; expected noise levels >= 0"),
    ("grid-one-level", lambda: SAMPLERS["euler"](_EMP, _X, [1.0]), ValueError, r"sigmas has 1 value\(s\); expected a descending grid of at least 2"),
    ("grid-2d", lambda: SAMPLERS["euler"](_EMP, _X, torch.ones(2, 2)), ValueError, r"1-D tensor of noise levels"),
    ("seeds-count", lambda: SAMPLERS["euler_maruyama"](_EMP, _X, _GRID, seeds=[1, 2]), ValueError, r"2 seed\(s\) for a batch of 4"),
    ("seeds-float", lambda: SAMPLERS["euler_maruyama"](_EMP, _X, _GRID, seeds=[1.5, 2, 3, 4]), ValueError, r"seeds must be integers"),
    ("x-1d", lambda: SAMPLERS["euler"](_EMP, _X[0], _GRID), ValueError, r"x has shape \(2,\); expected \(B, \*data_shape\)"),
    ("x-int", lambda: SAMPLERS["euler"](_EMP, torch.ones(4, 2, dtype=torch.long), _GRID), ValueError, r"x must be floating point, got dtype torch.int64"),
    ("denoiser-not-callable", lambda: SAMPLERS["heun"](42, _X, _GRID), ValueError, r"denoiser must be callable"),
    ("callback-not-callable", lambda: SAMPLERS["heun"](_EMP, _X, _GRID, callback=3), ValueError, r"callback must be callable"),
    ("heun-churn-window-nan", lambda: SAMPLERS["heun"](_EMP, _X, _GRID, s_churn=1.0, s_tmin=float("nan")), ValueError, r"s_tmin must be finite, got nan"),
    ("heun-churn-window-inverted", lambda: SAMPLERS["heun"](_EMP, _X, _GRID, s_churn=1.0, s_tmin=2.0, s_tmax=1.0), ValueError, r"s_tmax must be >= s_tmin = 2.0 \(inf allowed\), got 1.0"),
    ("unknown-option", lambda: SAMPLERS["heun"](_EMP, _X, _GRID, s_curn=1.0), TypeError, r"unexpected keyword argument 's_curn'"),
]


@pytest.mark.parametrize("name,call,exc,pattern", API_SAMPLE, ids=[c[0] for c in API_SAMPLE])
def test_api_sample(name: str, call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------------------ API: training
API_TRAIN: list[tuple[str, dict[str, Any], type, str]] = [
    ("steps-negative", {"steps": -1}, ValueError, r"steps must be a non-negative integer, got steps=-1"),
    ("steps-float", {"steps": 2.5}, ValueError, r"steps must be a non-negative integer, got steps=2.5"),
    ("batch-zero", {"batch_size": 0}, ValueError, r"batch_size must be a positive integer, got batch_size=0"),
    ("batch-larger-than-data", {"batch_size": 1000}, ValueError, r"larger than the data set \(64 points\)"),
    ("lr-zero", {"lr": 0.0}, ValueError, r"lr must be > 0, got 0.0"),
    ("lr-nan", {"lr": float("nan")}, ValueError, r"lr must be finite, got nan"),
    ("grad-clip-negative", {"grad_clip": -1.0}, ValueError, r"grad_clip must be >= 0, got -1.0"),
    ("sigma-dist-unknown", {"sigma_dist": "uniform"}, ValueError, r"sigma_dist|uniform"),
    ("sigma-range-inverted", {"sigma_min": 2.0, "sigma_max": 1.0}, ValueError, r"sigma_min \(2\) must not exceed sigma_max \(1\)"),
    ("weighting-unknown", {"weighting": "snr"}, ValueError, r"unknown weighting 'snr'; expected one of sigma2, edm"),
    ("seed-negative", {"seed": -1}, ValueError, r"seed must be a non-negative integer, got seed=-1"),
    ("ckpt-every-zero", {"ckpt_every": 0}, ValueError, r"ckpt_every must be a positive integer, got ckpt_every=0"),
    ("model-not-denoiser", {"model": torch.nn.Linear(2, 2)}, ValueError, r"model must be a denoiser from scoredyn.nets.precondition"),
    ("data-not-tensor", {"data": [[0.0, 1.0]]}, ValueError, r"data must be a tensor \(N, \*shape\) or a dataset name"),
    ("data-nan", {"data": torch.full((64, 2), float("nan"))}, ValueError, r"data contains 128 NaN/Inf value\(s\) out of 128; expected finite"),
    ("out-is-a-file", {"out": "FILE"}, ValueError, r"run folder .* is an existing file; expected a folder"),
]


@pytest.mark.parametrize("name,kw,exc,pattern", API_TRAIN, ids=[c[0] for c in API_TRAIN])
def test_api_train(name: str, kw: dict[str, Any], exc: type, pattern: str, tmp_path: Path) -> None:
    args: dict[str, Any] = {**FIT, **kw}
    model = args.pop("model", dict(SPEC))
    x = args.pop("data", _moons())
    if args.get("out") == "FILE":
        (tmp_path / "f").write_text("mine")
        args["out"] = tmp_path / "f"
    with pytest.raises(exc, match=pattern):
        _train(model, x, **args)
    if "out" in args:
        assert (tmp_path / "f").read_text() == "mine"


# ------------------------------------------------------------------------------------------ API: TrainConfig (0.2)
_TC = dict(steps=10, batch_size=8, lr=1e-3, sigma_dist="loguniform", sigma_min=0.01, sigma_max=3.0)


def _tc(**kw: Any) -> TrainConfig:
    return TrainConfig(**{**_TC, **kw})


API_CONFIG: list[tuple[str, Callable[[], Any], type, str]] = [
    ("steps-string", lambda: _tc(steps="10"), ValueError, r"steps must be a non-negative integer, got steps='10'"),
    ("steps-bool", lambda: _tc(steps=True), ValueError, r"steps must be a non-negative integer, got steps=True"),
    ("lr-none", lambda: _tc(lr=None), ValueError, r"lr must be a number, got lr=None"),
    ("grad-clip-string", lambda: _tc(grad_clip="x"), ValueError, r"grad_clip must be a number, got grad_clip='x'"),
    ("p-mean-string", lambda: _tc(p_mean="a"), ValueError, r"p_mean must be a number, got p_mean='a'"),
    # bool("no") is True: a flag given as a string or number was silently read as on
    ("bf16-string", lambda: _tc(bf16="no"), ValueError, r"bf16 must be True or False, got bf16='no'"),
    ("compile-int", lambda: _tc(compile=2), ValueError, r"compile must be True or False, got compile=2"),
    # an EMA decay above 1 was accepted by the config (fit refused it only after building the model)
    ("ema-decay-above-one", lambda: _tc(ema_decay=1.5), ValueError, r"ema_decay must be below 1 .*got 1.5"),
    ("levels-string", lambda: _tc(sigma_dist="geometric", levels="ten"), ValueError, r"levels must be an int \(their number\) or a sequence of noise levels, got levels='ten'"),
    ("betas-string", lambda: _tc(betas="0.9"), ValueError, r"betas must be two numbers in \[0, 1\), got betas='0.9'"),
    # the geometric grid's own check named its argument n: "n must be an integer >= 2, got n=1"
    ("levels-one", lambda: _tc(sigma_dist="geometric", levels=1), ValueError, r"levels must be an integer >= 2, got levels=1"),
    ("replace-unknown-field", lambda: _tc().replace(stepz=1), ValueError, r"unknown TrainConfig field\(s\) \['stepz'\]; expected some of \['batch_size'"),
    ("from-dict-missing-fields", lambda: TrainConfig.from_dict({"steps": 1}), ValueError, r"TrainConfig lacks the required field\(s\) \['batch_size', 'lr', 'sigma_dist', 'sigma_min', 'sigma_max'\]"),
    ("from-dict-not-a-mapping", lambda: TrainConfig.from_dict([1]), ValueError, r"read from a mapping of its fields, got list"),
    ("differences-with-a-dict", lambda: _tc().differences({"lr": 1}), ValueError, r"differences compares two TrainConfigs, got dict"),
]


@pytest.mark.parametrize("name,call,exc,pattern", API_CONFIG, ids=[c[0] for c in API_CONFIG])
def test_api_config(name: str, call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------------------ API: 0.2 results and helpers
def _solution() -> Any:
    from scoredyn.sample import ode_adaptive

    return ode_adaptive(_EMP, 3.0 * _X, sigma_min=0.05, sigma_max=3.0)


def _flow(**kw: Any) -> Any:
    from scoredyn.sample import autonomous

    return autonomous(_NA_FIELD.field, _X, 1.0, **kw)


def _tuple_of_solution() -> Any:
    x, nfe = _solution()  # the 0.1 habit
    return x, nfe


_NA_FIELD = analytic.NoiseAgnostic(_P, sigma_min=0.05, sigma_max=3.0)
API_RESULTS: list[tuple[str, Callable[[], Any], type, str]] = [
    ("solution-unpacked-as-tuple", _tuple_of_solution, TypeError, r"a Solution is not a tuple \(scoredyn 0.2\): read sol.x and sol.nfe, or x, nfe = sol.as_tuple\(\)"),
    ("solution-indexed", lambda: _solution()[0], TypeError, r"a Solution cannot be indexed \(sol\[0\]\); read its fields sol.x, sol.nfe"),
    ("sigma-grid-unknown-kind", lambda: sample_mod().sigma_grid("cosine", 10, sigma_min=0.01, sigma_max=1.0), ValueError, r"unknown grid kind 'cosine'; expected 'karras' or 'geometric'"),
    ("sigma-grid-swapped-range", lambda: sample_mod().sigma_grid("karras", 10, sigma_min=1.0, sigma_max=0.01), ValueError, r"sigma_min \(1\) must be below sigma_max \(0.01\); the noise range is given as sigma_min=..., sigma_max=..."),
    ("sigma-grid-n-float", lambda: sample_mod().sigma_grid("karras", 2.5, sigma_min=0.01, sigma_max=1.0), ValueError, r"n must be a positive integer, got n=2.5"),
    ("ode-adaptive-swapped-range", lambda: sample_mod().ode_adaptive(_EMP, _X, sigma_min=3.0, sigma_max=0.05), ValueError, r"sigma_min \(3\) must not exceed sigma_max \(0.05\)"),
    # float seeds were truncated silently by int(): seed 1.5 drew seed 1's noise
    ("noise-float-seed", lambda: sample_mod().noise([1.5, 2], (2,)), ValueError, r"seeds must be integers, got 1.5 of type float"),
    ("noise-shape-int", lambda: sample_mod().noise([1, 2], 2), ValueError, r"shape must be a sequence of positive integers such as \(2,\) or \(1, 28, 28\), got shape=2"),
    ("noise-shape-negative", lambda: sample_mod().noise([1, 2], (-2,)), ValueError, r"shape must be a sequence of positive integers.*got shape=\(-2,\)"),
    ("noise-seeds-scalar", lambda: sample_mod().noise(3, (2,)), ValueError, r"seeds must be a sequence of integers \(one per sample\), got int"),
    ("autonomous-unknown-method", lambda: _flow(method="euler2"), ValueError, r"method must be 'euler', 'rk4', 'dopri5', got method='euler2'"),
    ("autonomous-record-bool", lambda: _flow(n_steps=4, method="rk4", record=True), ValueError, r"record must be a non-negative integer, got record=True"),
    ("fixed-points-eigs-one", lambda: dynamics.fixed_points(_NA_FIELD.field, _XS, eigs=1), ValueError, r"eigs must be 'auto', 'full', 'none' or an int >= 2, got eigs=1"),
    ("fixed-points-eigs-bool", lambda: dynamics.fixed_points(_NA_FIELD.field, _XS, eigs=True), ValueError, r"eigs must be .* or an int >= 2, got eigs=True"),
    ("fixed-points-method", lambda: dynamics.fixed_points(_NA_FIELD.field, _XS, method="broyden"), ValueError, r"method must be 'auto', 'newton', 'newton-krylov', got method='broyden'"),
    ("kid-shapes-differ", lambda: metrics_mod().kid(_X, torch.randn(8, 3)), ValueError, r"samples has points of shape \(2,\) but reference of shape \(3,\); expected the same shape"),
    ("memorization-swapped-shapes", lambda: metrics_mod().memorization(_X, torch.randn(8, 3), sigma_min=0.1), ValueError, r"samples has shape \(4, 2\); expected \(B, 3\) to match the data shape \(3,\)"),
    ("precision-recall-k-too-large", lambda: metrics_mod().precision_recall(_X, _P, k=10), ValueError, r"samples has 4 point\(s\); expected at least 11"),
    ("memorization-list", lambda: metrics_mod().memorization(_X.tolist(), _P, sigma_min=0.1), ValueError, r"samples must be a torch.Tensor of shape \(N, \*data_shape\), got list"),
    ("fid-one-sample", lambda: metrics_mod().fid(_X[:1], _P), ValueError, r"samples has 1 point\(s\); expected at least 2"),
]


def sample_mod() -> Any:
    from scoredyn import sample

    return sample


def metrics_mod() -> Any:
    from scoredyn import metrics

    return metrics


@pytest.mark.parametrize("name,call,exc,pattern", API_RESULTS, ids=[c[0] for c in API_RESULTS])
def test_api_results(name: str, call: Callable[[], Any], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


def test_api_denoise_float_sigma() -> None:
    """A correct result: ``model.denoise(x, 0.3)`` (a float sigma) equals the call (was a TypeError in
    ``Empirical.temperatures`` and an AttributeError in ``NoiseAgnostic``); tests/test_api.py has every form."""
    for m in (_EMP, _NA_FIELD, _GMM0):
        assert torch.equal(m.denoise(_X, 0.3), m(_X, 0.3)), type(m).__name__


# ------------------------------------------------------------------------------------------ API: checkpoints
def _edit_config(ck: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        *head, last = path.split(".")
        d = cfg
        for k in head:
            d = d[k]
        d[last] = value

    return edit


def _rehash(ck: Path) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    cfg["files"] = {f: ckpt_io._sha256(ck / f) for f in ckpt_io.FILES}
    (ck / "config.json").write_text(json.dumps(cfg))


def _truncate_rng(ck: Path) -> None:
    from safetensors.torch import save_file

    rng = ckpt_io._load_tensors(ck / "rng.safetensors")
    rng["batch"] = rng["batch"][:100].clone()
    save_file(rng, str(ck / "rng.safetensors"))
    _rehash(ck)


API_CHECKPOINT: list[tuple[str, Callable[[Path], None], type, str]] = [
    ("config-missing", lambda ck: (ck / "config.json").unlink(), FileNotFoundError, r"no checkpoint at|config.json missing|not found"),
    ("config-not-json", lambda ck: (ck / "config.json").write_text("{oops"), ValueError, r"is not valid JSON.*corrupted"),
    ("config-wrong-format", _set("format", "other"), ValueError, r"not a scoredyn checkpoint config"),
    ("config-future-version", _set("version", 99), ValueError, r"format version 99; this scoredyn reads version 1"),
    ("config-lacks-model", lambda ck: _edit_config(ck, lambda c: c.pop("model")), ValueError, r"lacks the 'model' entry"),
    ("config-step-string", _set("step", "four"), ValueError, r"config.json: step is 'four' \(str\); expected an integer >= 0"),
    ("config-data-shape-string", _set("data_shape", ["2"]), ValueError, r"config.json: data_shape is \['2'\].*list of positive integers"),
    ("config-hidden-string", _set("model.net_kwargs.hidden", "16x"), ValueError, r"config.json: model.net_kwargs.hidden is '16x'.*positive integer"),
    ("config-net-unknown", _set("model.net", "os.system"), ValueError, r"unknown network class 'os.system'; allowed"),
    ("config-sigma-min-string", _set("train.sigma_dist.sigma_min", "small"), ValueError, r"train.sigma_dist.sigma_min is 'small'.*positive number"),
    ("weights-truncated", lambda ck: (ck / "ema.safetensors").write_bytes((ck / "ema.safetensors").read_bytes()[:50]), ValueError, r"ema.safetensors is corrupted or truncated"),
    ("weights-missing", lambda ck: (ck / "model.safetensors").unlink(), FileNotFoundError, r"model.safetensors is missing"),
    ("weights-garbage-rehashed", lambda ck: ((ck / "ema.safetensors").write_bytes(b"\x00" * 64), _rehash(ck)), ValueError, r"cannot read .*ema.safetensors as safetensors"),
    ("rng-truncated", _truncate_rng, ValueError, r"generator state 'batch' is 100 torch.uint8 values; expected \d+ uint8"),
]


@pytest.mark.parametrize("name,damage,exc,pattern", API_CHECKPOINT, ids=[c[0] for c in API_CHECKPOINT])
def test_api_checkpoint(name: str, damage: Callable[[Path], None], exc: type, pattern: str, run: Path, tmp_path: Path) -> None:
    """A damaged checkpoint fails loading (and resuming) with a message naming the file and the problem."""
    r = _copy_run(run, tmp_path / "r")
    ck = r / "ckpt" / "step-000000004"
    if isinstance(damage, Callable):  # type: ignore[arg-type]
        if damage.__name__ == "edit":
            _edit_config(ck, damage)  # type: ignore[arg-type]
        else:
            damage(ck)
    with pytest.raises(exc, match=pattern):
        if name == "rng-truncated":
            ckpt_io.load_rng(ck)
        else:
            ckpt_io.load(ck)


# ------------------------------------------------------------------------------------------ run folders
def _steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "ckpt").iterdir() if not p.name.startswith("."))


def rf_latest_missing(tmp: Path) -> None:
    _fit(tmp, steps=4)
    (tmp / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing; resuming from the newest valid checkpoint .*step-000000004"):
        _fit(tmp, steps=6)
    # steps 2 and 4 were written by an earlier writer: kept (keep=2 prunes only this writer's own)
    assert _steps(tmp) == ["step-000000002", "step-000000004", "step-000000006"]


def rf_latest_dangling(tmp: Path) -> None:
    _fit(tmp, steps=4)
    (tmp / "latest").write_text("ckpt/step-000000999\n")
    with pytest.warns(UserWarning, match="names 'ckpt/step-000000999'; resuming from .*step-000000004"):
        _fit(tmp, steps=4)
    assert _steps(tmp) == ["step-000000002", "step-000000004"]


def rf_newest_corrupt(tmp: Path) -> None:
    _fit(tmp, steps=4)
    (tmp / "ckpt" / "step-000000004" / "model.safetensors").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="step-000000004 is not a valid checkpoint.*renamed it invalid-step-000000004"):
        _fit(tmp, steps=4)
    assert _steps(tmp) == ["invalid-step-000000004", "step-000000002", "step-000000004"]


def rf_none_valid(tmp: Path) -> None:
    _fit(tmp, steps=2)
    (tmp / "ckpt" / "step-000000002" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds checkpoints but none is valid \\(step-000000002: .*\\); move them away"):
        _fit(tmp, steps=4)
    assert _steps(tmp) == ["step-000000002"]


def rf_no_resume_refused(tmp: Path) -> None:
    _fit(tmp, steps=2)
    with pytest.raises(ValueError, match="is not empty \\(.*ckpt.*\\); starting over would replace that run: pass overwrite"):
        _fit(tmp, steps=2, resume=False)
    assert _steps(tmp) == ["step-000000002"]


def rf_overwrite_moves_aside(tmp: Path) -> None:
    _fit(tmp, steps=2)
    before = (tmp / "metrics.jsonl").read_text()
    with pytest.warns(UserWarning, match="moved the earlier run .* to .*previous-1"):
        _fit(tmp, steps=2, resume=False, overwrite=True)
    assert (tmp / "previous-1" / "metrics.jsonl").read_text() == before
    assert _steps(tmp / "previous-1") == ["step-000000002"] and _steps(tmp) == ["step-000000002"]


def rf_second_writer_refused(tmp: Path) -> None:
    with acquire_folder(tmp, "run folder"):
        with pytest.raises(FolderBusy, match=f"run folder .* is in use by another scoredyn process \\(PID {os.getpid()}"):
            _fit(tmp, steps=2)
    _fit(tmp, steps=2)  # released: works
    assert _steps(tmp) == ["step-000000002"]


def rf_lock_file_of_dead_process(tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ".lock").write_text("999999\n")  # left by a killed writer: the kernel dropped its flock
    _fit(tmp, steps=2)
    assert (tmp / ".lock").read_text().strip() == str(os.getpid())


def rf_stale_temporary_removed(tmp: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    assert not pid_alive(pid)
    stray = tmp / "ckpt" / f".tmp-step-000000002-{pid}-abc"
    stray.mkdir(parents=True)
    live = tmp / "ckpt" / f".tmp-step-000000002-{os.getppid()}-abc"  # a live process's (our parent)
    live.mkdir()
    _fit(tmp, steps=2)
    assert not stray.exists() and live.exists()
    live.rmdir()


def rf_disk_full(tmp: Path) -> None:
    import scoredyn.train.checkpoint as mod

    _fit(tmp, steps=2)
    real = mod._save_tensors
    calls = {"n": 0}

    def full(tensors: Any, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)

    mod._save_tensors = full
    try:
        with pytest.raises(OSError, match="cannot write checkpoint step-000000004 .*no space left on device; the previous checkpoint is intact"):
            _fit(tmp, steps=4)
    finally:
        mod._save_tensors = real
    assert [p.name for p in (tmp / "ckpt").iterdir() if p.name.startswith(".")] == []
    assert (tmp / "latest").read_text().strip() == "ckpt/step-000000002"
    _fit(tmp, steps=4)  # the next run is not blocked
    assert _steps(tmp) == ["step-000000002", "step-000000004"]


def rf_other_process_checkpoints_kept(tmp: Path) -> None:
    _fit(tmp, steps=4, keep=1)
    assert _steps(tmp) == ["step-000000004"]
    _fit(tmp, steps=8, keep=1)  # resumed at 4: writes 6 and 8, prunes its own 6 only
    assert _steps(tmp) == ["step-000000004", "step-000000008"]


def rf_same_step_of_another_writer_kept(tmp: Path) -> None:
    model = _fit(tmp, steps=2)
    first = (tmp / "ckpt" / "step-000000002" / "ema.safetensors").read_bytes()
    ckpt_io._WRITTEN.clear()  # as if written by another process
    ckpt_io.save_checkpoint(tmp, 2, model=precondition(MLP(2, hidden=16, depth=2), "multiplicative"), ema=model,
                            optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                            rng={"batch": torch.get_rng_state(), "torch_cpu": torch.get_rng_state()}, config={})
    assert _steps(tmp) == ["replaced-step-000000002", "step-000000002"]
    assert (tmp / "ckpt" / "replaced-step-000000002" / "ema.safetensors").read_bytes() == first


def rf_out_is_file(tmp: Path) -> None:
    tmp.write_text("notes")
    with pytest.raises(ValueError, match="is an existing file; expected a folder"):
        _fit(tmp, steps=2)
    assert tmp.read_text() == "notes"


def rf_foreign_folder_refused(tmp: Path) -> None:
    tmp.mkdir(parents=True)
    (tmp / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no scoredyn run \\(thesis.tex\\); a run folder must be new"):
        _fit(tmp, steps=2)
    assert sorted(p.name for p in tmp.iterdir()) == [".lock", "thesis.tex"]


def rf_samples_in_run_folder_ok(tmp: Path) -> None:
    _fit(tmp, steps=2)
    (tmp / "samples.png").write_bytes(b"png")  # e.g. scoredyn sample RUN --out RUN/
    _fit(tmp, steps=4)
    assert _steps(tmp) == ["step-000000002", "step-000000004"] and (tmp / "samples.png").read_bytes() == b"png"


RUN_FOLDER = [rf_foreign_folder_refused, rf_samples_in_run_folder_ok, rf_latest_missing, rf_latest_dangling, rf_newest_corrupt, rf_none_valid, rf_no_resume_refused,
              rf_overwrite_moves_aside, rf_second_writer_refused, rf_lock_file_of_dead_process, rf_stale_temporary_removed,
              rf_disk_full, rf_other_process_checkpoints_kept, rf_same_step_of_another_writer_kept, rf_out_is_file]


@pytest.mark.parametrize("case", RUN_FOLDER, ids=[f.__name__[3:].replace("_", "-") for f in RUN_FOLDER])
def test_run_folder(case: Callable[[Path], None], tmp_path: Path) -> None:
    case(tmp_path / "run")


# ------------------------------------------------------------------------------------------ CLI: train
def _cli_train_cases(tmp: Path, run: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "file").write_text("x")
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    nonempty = _copy_run(run, tmp / "nonempty")
    rng_cut = _copy_run(run, tmp / "rng-cut")
    _truncate_rng(rng_cut / "ckpt" / "step-000000004")
    return {
        "resume-rng-truncated": ([*TRAIN[:-1], "--steps", "6", "--no-progress", "--out", str(rng_cut)],
                                 r"generator state 'batch' is 100 torch.uint8 values; expected \d+ uint8"),
        "out-is-a-file": ([*TRAIN, "--out", str(tmp / "file")], r"run folder .*file is an existing file; expected a folder"),
        "out-in-read-only-folder": ([*TRAIN, "--out", str(ro / "run")], r"error: Permission denied: .*readonly/run"),
        "out-under-a-file": ([*TRAIN, "--out", str(tmp / "file" / "run")], r"error: (Not a directory|File exists): .*file"),
        "data-is-a-path": ([*TRAIN, "--data", str(tmp)], r"--data .* is a path; --data takes a data set name .* e.g. --data folder --data-root"),
        "data-root-is-directory": ([*TRAIN, "--data", "npz", "--data-root", str(tmp)], r"is a directory; expected a .npz or .npy file"),
        "data-unknown": ([*TRAIN, "--data", "mnistt"], r"unknown data set 'mnistt'; known: moons"),
        "data-root-for-toy": ([*TRAIN, "--data-root", str(tmp)], r"generated, not read from disk"),
        "overwrite-without-no-resume": ([*TRAIN, "--overwrite", "--out", str(tmp / "o")], r"--overwrite only applies with --no-resume"),
        "no-resume-on-a-run": ([*TRAIN, "--no-resume", "--out", str(nonempty)], r"is not empty .* pass overwrite \(--overwrite\)"),
        "changed-arguments": ([*TRAIN[:-1], "--lr", "0.5", "--no-progress", "--out", str(nonempty)], r"cannot resume from .*training arguments differ.*'lr'"),
        "batch-larger-than-data": ([*TRAIN, "--batch-size", "1000", "--out", str(tmp / "b")], r"batch_size \(1000\) is larger than the data set \(64 points\)"),
        "unet-for-points": ([*TRAIN, "--net", "unet", "--out", str(tmp / "u")], r"--net unet needs images"),
        "zero-steps": ([*TRAIN, "--steps", "0", "--out", str(tmp / "z")], r"--steps and --keep must be >= 1 .*got 0 and 2"),
        "keep-zero": ([*TRAIN, "--keep", "0", "--out", str(tmp / "k")], r"--steps and --keep must be >= 1 .*got 4 and 0"),
        "bad-choice": ([*TRAIN, "--conditioning", "sde"], r"scoredyn train: error: argument --conditioning: invalid choice: 'sde'.*see scoredyn train --help"),
        "bad-int": ([*TRAIN, "--steps", "ten"], r"argument --steps: invalid int value: 'ten'"),
        "channel-mult-not-ints": ([*TRAIN, "--channel-mult", "1,x"], r"expected comma-separated integers, got '1,x'"),
        "divergence": ([*TRAIN[:-1], "--lr", "50", "--grad-clip", "0", "--warmup", "0", "--steps", "60",
                        "--no-progress", "--out", str(tmp / "div")], r"training diverged at step \d+: loss .* running median.*learning rate \(50"),
    }


CLI_TRAIN = ["resume-rng-truncated", "out-is-a-file", "out-in-read-only-folder", "out-under-a-file", "data-is-a-path", "data-root-is-directory",
             "data-unknown", "data-root-for-toy", "overwrite-without-no-resume", "no-resume-on-a-run", "changed-arguments",
             "batch-larger-than-data", "unet-for-points", "zero-steps", "keep-zero", "bad-choice", "bad-int", "channel-mult-not-ints", "divergence"]


@pytest.mark.parametrize("case", CLI_TRAIN)
def test_cli_train(case: str, tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    argv, pattern = _cli_train_cases(tmp_path, run)[case]
    if case == "out-in-read-only-folder" and os.geteuid() == 0:  # root ignores permissions: the OS error is simulated
        real = Path.mkdir

        def mkdir(self: Path, *a: Any, **k: Any) -> None:
            if "readonly" in str(self):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            real(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        _cli_error(capsys, argv, pattern)
    finally:
        (tmp_path / "readonly").chmod(0o700)


def test_cli_debug_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    for argv in (["--debug", *TRAIN, "--out", str(tmp_path / "file")], [*TRAIN, "--out", str(tmp_path / "file"), "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("scoredyn train: error:")


def test_cli_second_train_on_same_out_refused(tmp_path: Path) -> None:
    """Two ``scoredyn train`` on one --out: the second (a real process) is refused naming the first's PID."""
    out = tmp_path / "run"
    with acquire_folder(out, "run folder"):  # this process plays the first trainer
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "scoredyn.cli", *TRAIN, "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by another scoredyn process (PID {os.getpid()}" in lines[0], proc.stderr
    assert not (out / "ckpt").exists()


# ------------------------------------------------------------------------------------------ CLI: sample
def _sample(run: Path, *extra: str) -> list[str]:
    return ["sample", str(run), "--n", "4", "--steps", "3", "--no-progress", *extra]


CLI_SAMPLE: list[tuple[str, list[str], str]] = [
    ("opt-unknown-key", ["--opt", "foo=1"], r"--opt foo: annealed_langevin has no option 'foo'; its options: n_steps_each \(default 5\)"),
    ("opt-wrong-type", ["--opt", "n_steps_each=1.5"], r"--opt n_steps_each=1.5: annealed_langevin's n_steps_each expects a int \(default 5\)"),
    ("opt-bool-for-float", ["--sampler", "heun", "--opt", "s_churn=true"], r"heun's s_churn expects a float"),
    ("opt-string-for-int", ["--sampler", "unipc", "--opt", "order=two"], r"unipc's order expects a int"),
    ("opt-no-equals", ["--opt", "foo"], r"expected KEY=VALUE, got 'foo'"),
    ("opt-data-on-cli", ["--sampler", "unconditional_ode", "--opt", "data=x"], r"data option of unconditional_ode cannot be given"),
    ("unknown-sampler", ["--sampler", "ddim9"], r"unknown sampler 'ddim9'; expected one of"),
    ("n-zero", ["--n", "0"], r"--n, --batch-size and --steps must be >= 1"),
    ("out-no-extension", ["--out", "OUT/result"], r"--out .*result has no picture extension; expected one of .png"),
    ("out-under-a-file", ["--out", "OUT/file/pic.png"], r"error: (Not a directory|File exists): .*file"),
    ("bad-grid-choice", ["--grid", "cosine"], r"argument --grid: invalid choice: 'cosine'"),
    ("weights-choice", ["--weights", "best"], r"argument --weights: invalid choice"),
]


@pytest.mark.parametrize("name,extra,pattern", CLI_SAMPLE, ids=[c[0] for c in CLI_SAMPLE])
def test_cli_sample(name: str, extra: list[str], pattern: str, run: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    _cli_error(capsys, _sample(run, *[e.replace("OUT", str(tmp_path)) for e in extra]), pattern)


CLI_SAMPLE_RUN: list[tuple[str, Callable[[Path], None], str]] = [
    ("run-missing", lambda r: None, r"no checkpoint at .*nowhere"),
    ("latest-missing", lambda r: (r / "latest").unlink(), r"latest is missing; checkpoints found: ckpt/step-000000002, ckpt/step-000000004"),
    ("weights-garbage", lambda r: (r / "ckpt" / "step-000000004" / "ema.safetensors").write_bytes(b"xx"), r"ema.safetensors is corrupted or truncated"),
    ("config-wrong-type", lambda r: _edit_config(r / "ckpt" / "step-000000004", _set("data_shape", "2")), r"config.json: data_shape is '2' \(str\); expected a list of positive integers"),
    ("run-is-a-file", lambda r: None, r"no checkpoint at"),
]


@pytest.mark.parametrize("name,damage,pattern", CLI_SAMPLE_RUN, ids=[c[0] for c in CLI_SAMPLE_RUN])
def test_cli_sample_run(name: str, damage: Callable[[Path], None], pattern: str, run: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    r = _copy_run(run, tmp_path / "r")
    damage(r)
    target = {"run-missing": tmp_path / "nowhere", "run-is-a-file": r / "metrics.jsonl"}.get(name, r)
    _cli_error(capsys, _sample(target, "--out", str(tmp_path / "s.png")), pattern)


def test_cli_sample_outputs(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Correct results: ``--out DIR/`` and an existing folder are folders; a valid --opt is used."""
    monkeypatch.chdir(tmp_path)
    assert main(_sample(run, "--out", "newdir/")) == 0
    assert sorted(p.name for p in (tmp_path / "newdir").iterdir()) == ["samples.npz", "samples.png"]
    assert not (tmp_path / "newdir.npz").exists()
    (tmp_path / "existing").mkdir()
    assert main(_sample(run, "--out", "existing")) == 0
    assert sorted(p.name for p in (tmp_path / "existing").iterdir()) == ["samples.npz", "samples.png"]
    assert main(_sample(run, "--out", "a.png", "--opt", "n_steps_each=2")) == 0
    meta = json.loads(str(np.load(tmp_path / "a.npz")["meta"]))
    assert meta["options"] == {"n_steps_each": 2}
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "newdir" / "samples.npz")["samples"]
    assert a.shape == b.shape == (4, 2) and not np.array_equal(a, b)  # the option changed the sampler


# ------------------------------------------------------------------------------------------ CLI: other commands
def _cli_other_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "file").write_text("x")
    np.save(tmp / "ints.npy", np.arange(10).reshape(5, 2))
    return {
        "study-out-is-a-file": (["study", "kim", "--tiny", "--no-progress", "--out", str(tmp / "file")], r"scoredyn study: error: .*file"),
        "study-unknown": (["study", "kimm"], r"argument study: invalid choice: 'kimm'"),
        "study-both-sizes": (["study", "kim", "--quick", "--full"], r"not allowed with argument"),
        "analytic-data-directory": (["analytic-sample", "--data", str(tmp), "--no-progress"], r"is a directory; expected a .npz or .npy file"),
        "analytic-data-missing": (["analytic-sample", "--data", str(tmp / "none.npy"), "--no-progress"], r"none.npy does not exist; expected a .npy/.npz file or a data set name"),
        "analytic-data-ints": (["analytic-sample", "--data", str(tmp / "ints.npy"), "--no-progress"], r"holds int64; expected float32 or float64"),
        "analytic-model-choice": (["analytic-sample", "--data", "moons", "--model", "vae"], r"argument --model: invalid choice: 'vae'"),
        "analytic-device-missing": (["analytic-sample", "--data", "moons", "--device", "cuda:77", "--no-progress", "--out", str(tmp / "a")], r"device 'cuda:77' requested but CUDA is not available; use device='cpu'|cuda:77.*device"),
        "no-command": ([], r"scoredyn: error: the following arguments are required: COMMAND"),
        "unknown-command": (["trian"], r"invalid choice: 'trian'"),
    }


CLI_OTHER = ["study-out-is-a-file", "study-unknown", "study-both-sizes", "analytic-data-directory", "analytic-data-missing",
             "analytic-data-ints", "analytic-model-choice", "analytic-device-missing", "no-command", "unknown-command"]


@pytest.mark.parametrize("case", CLI_OTHER)
def test_cli_other(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, pattern = _cli_other_cases(tmp_path)[case]
    _cli_error(capsys, argv, pattern)


# ------------------------------------------------------------------------------------------ Jacobians
def _posterior_cov(points: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Closed form of dD/dx for the empirical denoiser: Cov_w[x_i] / sigma^2 (float64 brute force)."""
    w = torch.softmax(-((x[:, None] - points[None]) ** 2).sum(-1) / (2 * sigma**2), dim=1)
    mean = w @ points
    second = torch.einsum("bn,ni,nj->bij", w, points, points)
    return (second - mean[:, :, None] * mean[:, None, :]) / sigma**2


def _fd64(field: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Float64 central differences, one column at a time (an independent oracle)."""
    cols = []
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        cols.append((field(x + e) - field(x - e)) / (2 * h))
    return torch.stack(cols, dim=2)


_XS = torch.tensor([[0.3, 0.2], [0.1, -0.5]], dtype=D64)
_NA_M = analytic.NoiseAgnostic(_P, sigma_min=0.01, sigma_max=2.0)
_NA_U = analytic.NoiseAgnostic(_P, sigma_min=0.01, sigma_max=2.0, conditioning="unconditional")
_GMM = analytic.GaussianMixture(torch.tensor([0.3, 0.7], dtype=D64), torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=D64),
                                torch.tensor([0.2, 0.5], dtype=D64))
JAC_FIELDS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], float]] = [
    ("empirical-denoiser", lambda z: _EMP(z, 0.3), 1e-12),
    ("empirical-score", lambda z: _EMP.score(z, 0.3), 1e-11),
    ("empirical-top-k", lambda z: analytic.Empirical(_P, top_k=5)(z, 0.3), 1e-12),
    ("empirical-temperature", lambda z: analytic.Empirical(_P, temperature=2.0)(z, 0.3), 1e-12),
    ("noise-agnostic-multiplicative-field", _NA_M.field, 1e-10),
    ("noise-agnostic-unconditional-field", _NA_U.field, 1e-10),
    ("noise-agnostic-denoiser", lambda z: _NA_M(z, 0.5), 1e-10),
    ("gaussian-mixture-score", lambda z: _GMM.score(z, 0.3), 1e-10),
]


@pytest.mark.parametrize("name,field,tol", JAC_FIELDS, ids=[c[0] for c in JAC_FIELDS])
def test_jacobian(name: str, field: Callable[[torch.Tensor], torch.Tensor], tol: float) -> None:
    """Exact for every batch size: a batch of one equals a batch of two; both match a float64 oracle."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exact tier switches for lambdas over in-place kernels
        one = dynamics.jacobian(field, _XS[:1])
        two = dynamics.jacobian(field, _XS)
    diff = (one[0] - two[0]).abs().max().item()
    assert diff < 1e-13 * max(1.0, two.abs().max().item()), f"{name}: batch of one vs two differ by {diff:.3g}"
    oracle = _posterior_cov(_P, _XS, 0.3) if name == "empirical-denoiser" else _fd64(field, _XS)
    err = ((two - oracle).abs().max() / oracle.abs().max().clamp_min(1.0)).item()
    bound = 1e-13 if name == "empirical-denoiser" else 1e-7
    assert err < bound, f"{name}: Jacobian vs float64 oracle rel error {err:.3g} (bound {bound})"


def test_jacobian_autograd_through_gaussian_mixture_works() -> None:
    """Autograd through a closed-form model works: one isotropic Gaussian N(0, 0.5 I) has score
    -z / (0.5 + sigma^2), so the gradient of the summed score is -1 / 0.59 in every component."""
    g = _grad_of(lambda z: _GMM0.score(z, 0.3))
    assert torch.allclose(g, torch.full_like(g, -1 / 0.59), rtol=1e-14, atol=0), f"gradient {g.tolist()}"


def test_jacobian_fixed_point_batch_of_one_matches_batch() -> None:
    """The issue's case: eigenvalues at one state alone equal those in a batch (was -62.5 vs -66.2)."""
    from scoredyn.dynamics import fixed_points

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback at all for a bound analytic method
        alone = fixed_points(_NA_M.field, _P[:1] + 1e-3)
        batch = fixed_points(_NA_M.field, torch.cat([_P[:1] + 1e-3, _P[1:2] + 1e-3]))
    ev_a, ev_b = alone.eigenvalues[0].real.sort().values, batch.eigenvalues[0].real.sort().values
    assert torch.allclose(ev_a, ev_b, rtol=1e-10, atol=0), f"eigenvalues alone {ev_a.tolist()} vs batch {ev_b.tolist()}"


def test_jacobian_finite_differences_explicit_and_float64_only() -> None:
    field = lambda z: torch.from_numpy(np.tanh(z.detach().numpy()))  # noqa: E731
    with pytest.raises(RuntimeError, match="cannot differentiate the field exactly.*finite_differences=True"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dynamics.jacobian(field, _XS)
    with pytest.raises(ValueError, match="need float64 states, got torch.float32"):
        dynamics.jacobian(field, _XS.float(), finite_differences=True)
    with pytest.raises(RuntimeError, match="does not support forward-mode AD.*finite_differences=True"):
        dynamics.jvp(field, _XS, torch.ones_like(_XS))
    jac = dynamics.jacobian(field, _XS, finite_differences=True)
    err = (jac - torch.diag_embed(1 - torch.tanh(_XS) ** 2)).abs().max().item()
    assert err < 1e-9, f"float64 central differences: error {err:.3g}"


# ------------------------------------------------------------------------------------------ divergence
def div_huge_lr(tmp: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"training diverged at step (\d+): loss (\S+) is .* times its running median .*learning rate \(50"):
        _train(dict(SPEC), _moons(), **{**FIT, "steps": 60, "lr": 50.0, "grad_clip": 0.0, "warmup": 0, "log_every": 100})


def div_data_1e30(tmp: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"step 1: loss is nan.*data scale \(training data RMS point norm 1\.\d+e\+30"):
        _train(dict(SPEC), _moons() * 1e30, **{**FIT, "sigma_max": 3e30})


def div_healthy_not_flagged(tmp: Path) -> None:
    _train(dict(SPEC), _moons(), **{**FIT, "steps": 30})


def div_monitor_spike(tmp: Path) -> None:
    m = DivergenceMonitor(1e-3, torch.ones(4, 2))
    for v in [1.0, 1.2, 0.9] * 4:
        m.record(torch.tensor(v))
    m.check(12)
    m.record(torch.tensor(2e3))
    with pytest.raises(TrainingDiverged, match=r"step 13: loss 2e\+03 is 2e\+03 times its running median 1 "):
        m.check(13)


def div_monitor_slow_decrease_ok(tmp: Path) -> None:
    m = DivergenceMonitor(1e-3, torch.ones(4, 2))
    for i in range(300):
        m.record(torch.tensor(100.0 * 0.98**i))
    m.check(300)


def div_monitor_factor_checked(tmp: Path) -> None:
    with pytest.raises(ValueError, match="factor must be > 1"):
        DivergenceMonitor(1e-3, torch.ones(4, 2), factor=0.5)


DIVERGENCE = [div_huge_lr, div_data_1e30, div_healthy_not_flagged, div_monitor_spike, div_monitor_slow_decrease_ok,
              div_monitor_factor_checked]


@pytest.mark.parametrize("case", DIVERGENCE, ids=[f.__name__[4:].replace("_", "-") for f in DIVERGENCE])
def test_divergence(case: Callable[[Path], None], tmp_path: Path) -> None:
    case(tmp_path)


# ------------------------------------------------------------------------------------------ catalogue size
def test_catalogue_size() -> None:
    counts = {"api_data": len(API_DATA), "api_analytic": len(API_ANALYTIC), "api_sample": len(API_SAMPLE),
              "api_train": len(API_TRAIN), "api_config": len(API_CONFIG), "api_results": len(API_RESULTS) + 1,
              "api_checkpoint": len(API_CHECKPOINT), "run_folder": len(RUN_FOLDER),
              "cli_train": len(CLI_TRAIN) + 2, "cli_sample": len(CLI_SAMPLE) + len(CLI_SAMPLE_RUN) + 1,
              "cli_other": len(CLI_OTHER), "jacobian": len(JAC_FIELDS) + 3, "divergence": len(DIVERGENCE)}
    total = sum(counts.values())
    assert total >= 120, f"catalogue has {total} cases: {counts}"
