"""``scoredyn analytic-sample``: one process vs the Python API, and two gloo processes under torchrun
(sharded training set, one all-reduce per call) vs one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredyn.analytic import Empirical
from scoredyn.cli import main
from scoredyn.data import load
from scoredyn.sample import heun, noise, sigmas_karras


def _write_moons(tmp_path: Path) -> Path:
    path = tmp_path / "moons.npy"
    np.save(path, load("moons", n=301, seed=3).numpy())
    return path


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["analytic-sample", "--data", str(data), "--model", "empirical", "--temperature", "2",
            "--sampler", "heun", "--steps", "6", "--sigma-max", "10", "--sigma-min", "0.01",
            "--num-samples", "12", "--batch-size", "5", "--seed", "7", "--device", "cpu", "--out", str(out),
            "--no-progress", *extra]


def test_single_process_equals_python_api(tmp_path: Path) -> None:
    data = _write_moons(tmp_path)
    assert main(_args(data, tmp_path / "one")) == 0
    with np.load(tmp_path / "one" / "samples.npz") as z:
        got = torch.from_numpy(z["samples"])
        assert z["seeds"].tolist() == list(range(7, 19))
    model = Empirical(torch.from_numpy(np.load(data)), temperature=2.0)
    sigmas = sigmas_karras(6, sigma_min=0.01, sigma_max=10.0)
    seeds = list(range(7, 19))
    ref = heun(model, float(sigmas[0]) * noise(seeds, (2,), "cpu", torch.float32), sigmas, seeds=seeds)
    assert torch.allclose(got, ref, atol=1e-6), f"max deviation {float((got - ref).abs().max()):.2e}"
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    assert cfg["world_size"] == 1 and cfg["n_training_points"] == 301
    assert (tmp_path / "one" / "samples.png").stat().st_size > 0


def test_two_processes_under_torchrun_equal_one(tmp_path: Path) -> None:
    data = _write_moons(tmp_path)
    assert main(_args(data, tmp_path / "one", "--top-k", "40")) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "scoredyn.cli", *_args(data, tmp_path / "two", "--top-k", "40")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "two" / "samples.npz") as b:
        dev = float(np.abs(a["samples"] - b["samples"]).max())
    assert dev < 1e-5, f"2 processes vs 1: max deviation {dev:.2e}"
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tmp_path / "missing.npy", tmp_path / "o")) == 2
    assert "does not exist" in capsys.readouterr().err
    data = _write_moons(tmp_path)
    assert main(_args(data, tmp_path / "o", "--num-points", "0")) == 2
    assert "--num-points" in capsys.readouterr().err
    assert main([*_args(data, tmp_path / "o"), "--sampler", "nope"]) == 2
    assert "unknown sampler" in capsys.readouterr().err
