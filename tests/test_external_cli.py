"""``scoredyn sample --model diffusers:PATH``, ``scoredyn invert`` and ``scoredyn likelihood`` on a saved
random tiny diffusers UNet (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny_unet import need_diffusers, save_tiny_model
from scoredyn.cli import main
from scoredyn.external import load_diffusers
from scoredyn.sample import SAMPLERS, noise, sigmas_karras


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    need_diffusers()
    return save_tiny_model(tmp_path_factory.mktemp("ddpm") / "model")


def test_sample_with_a_diffusers_model(model_dir, tmp_path, capsys):
    out = tmp_path / "s.png"
    rc = main(["sample", "--model", f"diffusers:{model_dir}", "--sampler", "euler", "--steps", "4", "--n", "3",
               "--seed", "5", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    got = np.load(out.with_suffix(".npz"))["samples"]
    # the same samples through the Python API: sample i from seed 5 + i
    den = load_diffusers(model_dir)
    sig = sigmas_karras(4, sigma_min=den.sigma_min, sigma_max=den.sigma_max)
    x = float(sig[0]) * noise([5, 6, 7], (1, 8, 8))
    with torch.no_grad():
        want = SAMPLERS["euler"](den, x, sig, seeds=[5, 6, 7]).numpy()
    assert got.shape == (3, 1, 8, 8)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err < 1e-5, f"CLI samples vs the Python API: rel diff {err:.2e}"


def test_sample_needs_exactly_one_model(capsys):
    assert main(["sample", "--device", "cpu"]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_likelihood_command(model_dir, tmp_path, capsys):
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "ll.json"
    args = ["likelihood", f"diffusers:{model_dir}", "--input", str(tmp_path / "x.npy"), "--sigma-min", "0.05",
            "--sigma-max", "20", "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert len(rep["nats"]) == 2 and all(np.isfinite(rep["bits_per_dim"]))
    assert "bits/dim" in capsys.readouterr().out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # an existing result is kept
    np.save(tmp_path / "bad.npy", x[:, :, :4])
    bad = ["likelihood", f"diffusers:{model_dir}", "--input", str(tmp_path / "bad.npy"), "--device", "cpu", "--out", str(tmp_path / "b.json")]
    assert main(bad) == 2 and "expected floats of shape" in capsys.readouterr().err


def test_invert_command_round_trips(model_dir, tmp_path, capsys):
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", samples=x)
    out = tmp_path / "lat.npz"
    rc = main(["invert", f"diffusers:{model_dir}", "--input", str(tmp_path / "x.npz"), "--sampler", "dpmpp_2m",
               "--steps", "8", "--sigma-min", "0.05", "--sigma-max", "10", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    f = np.load(out)
    lat, grid = torch.from_numpy(f["latents"]), torch.from_numpy(f["sigmas"])
    assert bool((grid[1:] > grid[:-1]).all()) and float(grid[0]) == pytest.approx(0.05)
    den = load_diffusers(model_dir)
    with torch.no_grad():
        back = SAMPLERS["dpmpp_2m"](den, lat, grid.flip(0))
    assert lat.shape == x.shape and float((lat.std() / torch.from_numpy(x).std())) > 2, "latents are not noise-scale"
    assert torch.isfinite(back).all()
    assert main(["invert", f"diffusers:{model_dir}", "--input", str(tmp_path / "x.npz"), "--sampler", "euler_ancestral",
                 "--device", "cpu", "--out", str(tmp_path / "l2.npz")]) == 2
    assert "cannot invert" in capsys.readouterr().err
