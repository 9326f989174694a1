"""``scoredyn train`` / ``scoredyn sample`` end to end with tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoredyn.cli import build_parser, main
from scoredyn.train import load

TRAIN_OPTIONS = ["--data", "--data-root", "--n", "--num-points", "--conditioning", "--net", "--hidden", "--depth", "--base",
                 "--channel-mult", "--num-blocks", "--batch-size", "--lr", "--sigma-dist", "--sigma-min", "--sigma-max",
                 "--levels", "--weighting", "--ema", "--seed", "--device", "--ckpt-every", "--compile", "--out",
                 "--no-resume"]


def test_help_lists_every_option_with_defaults() -> None:
    res = subprocess.run([sys.executable, "-m", "scoredyn.cli", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    missing = [o for o in TRAIN_OPTIONS if o not in text]
    assert not missing, f"train --help lacks {missing}"
    for default in ["(default: moons)", "(default: multiplicative)", "(default: 2000)", "(default: 0.999)",
                    "0.01 otherwise", "largest pairwise data distance"]:
        assert default in text, f"train --help does not show {default!r}"
    sample_help = build_parser().parse_args(["sample", "run"])
    assert sample_help.steps == 18 and sample_help.n == 64 and sample_help.out == "samples.png"


def test_train_then_sample_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "moons"
    argv = ["train", "--data", "moons", "--n", "256", "--conditioning", "multiplicative", "--steps", "30",
            "--batch-size", "64", "--hidden", "32", "--depth", "2", "--ckpt-every", "10", "--log-every", "10",
            "--out", str(run), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    assert (run / "latest").read_text().strip() == "ckpt/step-000000030"
    cfg = json.loads((run / "ckpt" / "step-000000030" / "config.json").read_text())
    assert cfg["model"]["net"] == "MLP" and cfg["train"]["sigma_dist"]["name"] == "loguniform"
    assert cfg["train"]["data"]["name"] == "moons" and cfg["train"]["data"]["shape"] == [256, 2]
    # the default sigma_max is the largest pairwise distance of the data (NCSNv2)
    assert 3.0 < cfg["train"]["sigma_dist"]["sigma_max"] < 6.0

    pic = tmp_path / "out" / "samples.png"
    for sampler, extra in [("annealed_langevin", ["--opt", "n_steps_each=2"]), ("heun", [])]:
        argv = ["sample", str(run), "--sampler", sampler, "--steps", "6", "--n", "10", "--batch-size", "4",
                "--seed", "3", "--out", str(pic), "--no-progress", *extra]
        assert main(argv) == 0
        with np.load(pic.with_suffix(".npz"), allow_pickle=False) as z:
            samples, seeds, meta = z["samples"], z["seeds"], json.loads(str(z["meta"]))
        assert samples.shape == (10, 2) and np.isfinite(samples).all() and list(seeds) == list(range(3, 13))
        assert meta["sampler"] == sampler
        assert Image.open(pic).format == "PNG"
        # per-sample seeds: the first 4 samples do not depend on --n or --batch-size
        argv_small = [a if a != "10" else "4" for a in argv]
        argv_small[argv_small.index("--batch-size") + 1] = "2"
        argv_small[argv_small.index("--out") + 1] = str(tmp_path / "small.png")
        assert main(argv_small) == 0
        with np.load(tmp_path / "small.npz", allow_pickle=False) as z:
            np.testing.assert_array_equal(z["samples"], samples[:4])
    # resuming a finished run with more steps continues it
    assert main(["train", "--data", "moons", "--n", "256", "--steps", "40", "--batch-size", "64", "--hidden", "32",
                 "--depth", "2", "--ckpt-every", "10", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert (run / "latest").read_text().strip() == "ckpt/step-000000040"
    capsys.readouterr()


def test_train_and_sample_images_edm(tmp_path: Path) -> None:
    run = tmp_path / "digits"
    argv = ["train", "--data", "digits", "--n", "32", "--conditioning", "edm", "--base", "8", "--channel-mult", "1,2",
            "--num-blocks", "1", "--steps", "2", "--batch-size", "8", "--out", str(run), "--no-progress",
            "--device", "cpu"]
    assert main(argv) == 0
    model = load(run)
    assert model.conditioning == "edm" and model.data_shape == (1, 8, 8)
    pic = tmp_path / "grid.png"
    assert main(["sample", str(run), "--steps", "3", "--n", "5", "--out", str(pic), "--no-progress"]) == 0
    img = Image.open(pic)
    # a 3x2 grid of 8x8 digits enlarged 10x (256 // (3 * 8)) with 2-pixel borders: 3*82+2 by 2*82+2
    assert img.mode == "L" and img.size == (248, 166)
    with np.load(tmp_path / "grid.npz", allow_pickle=False) as z:
        samples = z["samples"]
    assert samples.shape == (5, 1, 8, 8)
    pix = np.asarray(img)
    # sample i sits in row i // 3, column i % 3, its cell starting at 2 + 82 * (row, column); each pixel
    # is a 10 x 10 block; the sixth cell stays at the padding value (white)
    assert (pix[84 : 84 + 80, 166 : 166 + 80] == 255).all()
    expected = np.clip(np.rint((samples[4, 0].astype(np.float64) + 1) * 127.5), 0, 255)
    np.testing.assert_array_equal(pix[84 : 84 + 80 : 10, 84 : 84 + 80 : 10], expected)


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "moons", "--n", "16", "--batch-size", "32", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "batch_size (32) is larger than the data set (16 points)" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--conditioning", "vp"])
    capsys.readouterr()
    torch.manual_seed(0)
