"""``scoredyn analyse``: the report on a tiny trained model and on a random diffusers UNet, its cache,
and the errors for a model that does not fit the data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from scoredyn import analyse, data, train
from scoredyn.cli import main

SECTION_TITLES = ("Findings", "1. Samples", "2. Memorization", "3. Quality", "4. Structure of the score",
                  "5. Teleportation", "6. Likelihood", "7. Dynamics at the smallest sigma")
MOONS_SPEC = {"net": "MLP", "net_kwargs": {"dim": 2, "hidden": 64, "depth": 2, "cond": True},
              "conditioning": "edm", "sigma_data": 0.5}


class Shrink(torch.nn.Module):
    """D(x, sigma) = x / (1 + sigma^2): the exact denoiser of N(0, I) data."""

    def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        return x / (1 + s**2)


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EDM model trained for 300 steps on 300 moons points, saved as a scoredyn run."""
    out = tmp_path_factory.mktemp("moons_run")
    cfg = train.TrainConfig(steps=300, batch_size=128, lr=3e-3, sigma_dist="lognormal", sigma_min=0.002, sigma_max=80.0,
                            seed=0, ckpt_every=300, log_every=1000)
    train.fit(dict(MOONS_SPEC), "moons", cfg, out=out, data_n=300, progress=False)
    return out


def _sections(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["title"]: s for s in res["studies"]["analyse"]["sections"]}


def _check_report(out: Path, res: dict[str, Any], ran: tuple[str, ...]) -> None:
    """Every section is present; those in ``ran`` have finite numbers in every table; the files exist."""
    secs = _sections(res)
    titles = list(secs)
    for want in SECTION_TITLES:
        assert any(t.startswith(want) for t in titles), f"section {want!r} missing; have {titles}"
    for title, s in secs.items():
        if any(title.startswith(r) for r in ran):
            assert s["tables"], f"section {title!r} has no table: {s['text']}"
            for name, t in s["tables"].items():
                for row in t["rows"]:
                    assert None not in row, f"table {name} has a missing / non-finite number: {row}"
                    for c in row:
                        if isinstance(c, float):
                            assert math.isfinite(c), f"table {name}: {c}"
        elif not s["tables"]:
            assert s["text"].startswith("Skipped: "), f"section {title!r} neither ran nor says why: {s['text']!r}"
    for f in ("report.md", "report.html", "results.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f"{f} missing"
    md = (out / "report.md").read_text()
    assert md.startswith("# scoredyn analyse report")
    figs = [f["file"] for s in secs.values() for f in s["figures"]]
    assert figs and all((out / f).is_file() for f in figs), f"figures missing: {figs}"
    assert "data:image/png;base64," in (out / "report.html").read_text(), "report.html does not embed its figures"
    assert json.loads((out / "results.json").read_text())["studies"]["analyse"]["sections"][0]["title"] == "Findings"


def test_analyse_cli_on_a_trained_moons_run(moons_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = main(["analyse", str(moons_run), "--tiny", "--out", str(out), "--no-progress", "--fixed-points"])
    err = capsys.readouterr()
    assert rc == 0, err.err
    assert "Is it memorizing?" in err.out and "CPU" in err.out
    res = json.loads((out / "results.json").read_text())
    _check_report(out, res, ran=SECTION_TITLES)
    notes = res["studies"]["analyse"]["notes"]
    assert any("SHA-256 matches" in n for n in notes), f"the run's training data was not recognised: {notes}"
    head = dict(_sections(res)["Findings"]["tables"]["headline"]["rows"])
    # a smooth 300-step model on 300 points does not copy; the exact empirical denoiser does (Gu et al.'s criterion)
    assert head["copy_fraction"] < 0.3 < 0.9 < head["copy_fraction_empirical"], head
    # a rerun reuses every stage
    rc = main(["analyse", str(moons_run), "--tiny", "--out", str(out), "--no-progress", "--fixed-points"])
    assert rc == 0
    stages = json.loads((out / "timings.json").read_text())["analyse"]["stages"]  # timings live beside results.json
    assert stages and all(s["cached"] for s in stages), stages


def test_analyse_python_without_heldout_skips_what_needs_it(moons_run: Path, tmp_path: Path) -> None:
    model = train.load(moons_run)
    x = data.load("moons", n=300)
    res = analyse.run(model, x, None, tmp_path, analyse.preset("tiny"), progress=False, log=lambda s: None)
    _check_report(tmp_path, res, ran=SECTION_TITLES[:7])
    q = _sections(res)["3. Quality"]["tables"]["quality"]["rows"]
    assert any(r[0].startswith("floor: training data, one half") for r in q), q


def test_a_model_without_reverse_mode_autograd_gets_its_likelihood_section_skipped(tmp_path: Path) -> None:
    from scoredyn.analytic import Empirical

    x = data.load("moons", n=64)
    cfg = analyse.with_overrides(analyse.preset("tiny"), gmm_components=(2,), n_samples=16)
    res = analyse.run(Empirical(x), x, data.load("moons", n=64, split="test"), tmp_path, cfg, progress=False,
                      log=lambda s: None)
    text = _sections(res)["6. Likelihood"]["text"]
    assert text.startswith("Skipped: ") and "autograd" in text, text
    _check_report(tmp_path, res, ran=SECTION_TITLES[:6])
    head = dict(_sections(res)["Findings"]["tables"]["headline"]["rows"])
    assert head["copy_fraction"] > 0.9, f"the empirical denoiser itself copies: {head['copy_fraction']}"


def test_model_and_data_shape_mismatch_is_a_clear_error(moons_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyse", str(moons_run), "--data", "digits", "--tiny", "--out", str(tmp_path), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "shape (2,)" in err and "(1, 8, 8)" in err, err
    assert not (tmp_path / "report.md").exists()


def test_data_range_mismatch_is_a_clear_error_and_the_option_maps_it(tmp_path: Path) -> None:
    x = data.load("digits", n=64)
    pixels = (x + 1) * 127.5  # [0, 255]
    with pytest.raises(ValueError, match=r"outside the model's data range \[-1, 1\].*--data-range"):
        analyse.run(Shrink(), pixels, None, tmp_path, analyse.preset("tiny"), progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match=r"upper half.*\[0, 1\]"):
        analyse.run(Shrink(), pixels / 255, None, tmp_path, analyse.preset("tiny"), progress=False,
                    log=lambda s: None)
    assert not (tmp_path / "report.md").exists()
    cfg = analyse.with_overrides(analyse.preset("tiny"), uv_sigmas=2, gmm_components=(2,), n_samples=16)
    res = analyse.run(Shrink(), pixels, None, tmp_path, cfg, data_range=(0, 255), progress=False, log=lambda s: None)
    assert list(res["config"]["data_range"]) == [-1.0, 1.0]


def test_likelihood_section_matches_the_closed_form_of_a_gaussian_model(tmp_path: Path) -> None:
    """For N(0, I) data the exact denoiser is D(x, sigma) = x / (1 + sigma^2) and p_sigma = N(0, (1 + sigma^2) I):
    the section's bits/dim must equal -log p_sigma_min(x) / (d log 2) averaged over the same points."""

    gen = torch.Generator().manual_seed(0)
    train_x, held = torch.randn(8, 2, generator=gen), 2.0 * torch.randn(8, 2, generator=gen)
    cfg = analyse.with_overrides(analyse.preset("tiny"), likelihood_n=8, likelihood_rtol=1e-6, sigma_min=0.01,
                                 sigma_max=100.0, gmm_components=(2,))
    res = analyse.run(Shrink(), train_x, held, tmp_path, cfg, progress=False, log=lambda s: None)
    rows = {r[0]: r for r in _sections(res)["6. Likelihood"]["tables"]["likelihood"]["rows"]}
    var = 1 + 0.01**2
    for name, x in (("train", train_x), ("held-out", held)):
        nll = 0.5 * (x.double() ** 2).sum(1) / var + math.log(2 * math.pi * var)  # d = 2
        want = float((nll / (2 * math.log(2))).mean())
        assert rows[name][2] == pytest.approx(want, abs=2e-3), f"{name}: section {rows[name][2]}, closed form {want}"
    gap = rows["gap: held-out - train"][2]
    assert gap > 1.0, f"held-out points drawn 2x wider must be less likely: gap {gap} bits/dim"


def test_a_folder_that_is_no_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyse", str(tmp_path), "--data", "moons", "--tiny", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "neither a scoredyn run" in err and "diffusers" in err, err
    (tmp_path / "model_index.json").write_text("{}")
    assert main(["analyse", str(tmp_path), "--data", "moons", "--tiny"]) == 2
    assert "diffusers:" in capsys.readouterr().err


def test_random_diffusers_unet_is_analysed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("scoredyn.external", reason="scoredyn.external (the diffusers wrappers) is not in this build")
    from _tiny_unet import save_tiny_model  # skips when diffusers is absent

    model_dir = save_tiny_model(tmp_path / "unet")  # a random UNet2DModel + DDPMScheduler via save_pretrained
    imgs = tmp_path / "digits.npz"
    import numpy as np

    x = data.load("digits", n=40)
    np.savez(imgs, x_train=x.numpy(), x_test=data.load("digits", split="test", n=24).numpy())
    out = tmp_path / "report"
    rc = main(["analyse", f"diffusers:{model_dir}", "--data", str(imgs), "--heldout", "digits", "--n-heldout", "24",
               "--tiny", "--n", "16", "--steps", "6", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    _check_report(out, res, ran=SECTION_TITLES[:7])
    assert "diffusers model" in res["config"]["model"]
    # the UNet was built for 8x8 single-channel images: 28x28 data is refused before any work
    np.save(tmp_path / "big.npy", torch.zeros(8, 1, 28, 28).numpy())
    rc = main(["analyse", f"diffusers:{model_dir}", "--data", str(tmp_path / "big.npy"), "--heldout", "none", "--tiny"])
    assert rc == 2 and "(1, 8, 8)" in capsys.readouterr().err
