"""scoredyn.metrics.features: the project's classifier feature nets and the Inception hook."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from scoredyn.data import load_labeled
from scoredyn.metrics import FEATURE_NOTE, feature_net_info, features, load_feature_net

feat = importlib.import_module("scoredyn.metrics.features")  # the module (the package exports a function of that name)

DIGITS_MIN_ACCURACY = 0.95  # measured 0.980 (291/297) on the project's held-out digits split
MNIST_MIN_ACCURACY = 0.98  # measured on the 10,000 official test images (see src/scoredyn/assets/mnist.json)


def shared_data() -> Path | None:
    env = os.environ.get("SCOREDYN_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def test_digits_net_accuracy_on_held_out_split() -> None:
    x, y = load_labeled("digits", split="test")
    net = load_feature_net("digits")
    acc = feat.accuracy(net, x, y)
    info = feature_net_info("digits")
    assert acc >= DIGITS_MIN_ACCURACY, f"digits net accuracy {acc:.4f} < {DIGITS_MIN_ACCURACY}"
    assert abs(acc - info["test_accuracy"]) < 1e-4, f"accuracy {acc:.5f} differs from the recorded {info['test_accuracy']}"
    assert info["n_test"] == len(y) and info["seed"] == 0


def test_digits_features_shapes_and_determinism() -> None:
    x, _ = load_labeled("digits", split="test")
    f = features(x, "digits")
    assert f.shape == (len(x), 64) and f.dtype == torch.float32
    assert torch.equal(f, features(x, "digits")), "features are not deterministic"
    assert torch.equal(f, features(x[:, 0], "digits")) and torch.equal(f, features(x.reshape(len(x), 64), "digits"))
    small = features(x, "digits", batch_size=7)
    # only float32 summation order may differ with the batch (BLAS blocking, thread count)
    err = float((small - f).abs().max() / f.abs().max())
    assert err < 1e-6, f"features depend on the batch size: max relative difference {err:.3g}"
    assert bool((f >= 0).all()), "penultimate features are post-ReLU"
    assert torch.equal(features(x.double(), "digits"), f)


def test_wrong_image_size_raises() -> None:
    with pytest.raises(ValueError, match=r"expects 8x8 single-channel images"):
        features(torch.zeros(4, 1, 28, 28), "digits")
    with pytest.raises(ValueError, match=r"expects 28x28 single-channel images"):
        features(torch.zeros(4, 1, 8, 8), "mnist")
    with pytest.raises(ValueError, match="expects 8x8"):
        features(torch.zeros(4, 3, 8, 8), "digits")
    with pytest.raises(ValueError, match="unknown feature net 'cifar'"):
        features(torch.zeros(4, 1, 8, 8), "cifar")
    with pytest.raises(ValueError, match="NaN"):
        features(torch.full((2, 1, 8, 8), float("nan")), "digits")


def test_mnist_net_loads_and_classifies() -> None:
    if not feat.asset_path("mnist").is_file():
        pytest.skip("src/scoredyn/assets/mnist.safetensors is missing (run scripts/train_feature_nets.py)")
    net = load_feature_net("mnist", train_if_missing=False)
    f = features(torch.zeros(3, 28, 28), "mnist")
    assert f.shape == (3, 128)
    info = feature_net_info("mnist")
    assert info["test_accuracy"] >= MNIST_MIN_ACCURACY and info["n_train"] == 60_000
    root = shared_data()
    if root is None:
        pytest.skip("../shared/data is absent: MNIST test images unavailable for the accuracy check")
    x, y = load_labeled("mnist", root, "test", 2000, 0)
    acc = feat.accuracy(net, x, y)
    assert acc >= MNIST_MIN_ACCURACY, f"MNIST net accuracy {acc:.4f} on 2,000 test images < {MNIST_MIN_ACCURACY}"


def test_train_on_first_use_caches_and_checks_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREDYN_CACHE", str(tmp_path))
    monkeypatch.setattr(feat, "asset_path", lambda name: tmp_path / "no-assets" / f"{name}.safetensors")
    monkeypatch.setitem(feat.NETS, "digits", dataclasses.replace(feat.NETS["digits"], epochs=3))
    monkeypatch.setattr(feat, "_LOADED", {})
    with pytest.raises(FileNotFoundError, match="no weights for feature net 'digits'"):
        load_feature_net("digits", train_if_missing=False)
    with pytest.warns(UserWarning, match="training it now"):
        net = load_feature_net("digits")
    weights = tmp_path / "feature_nets" / "digits.safetensors"
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert weights.is_file() and meta["epochs"] == 3 and weights.stat().st_size < 1_000_000
    assert [p.name for p in weights.parent.iterdir() if p.name.endswith(".tmp")] == [], "temp files left behind"
    x, y = load_labeled("digits", split="test")
    assert abs(feat.accuracy(net, x, y) - meta["test_accuracy"]) < 1e-4
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    monkeypatch.setattr(feat, "_LOADED", {})
    with pytest.raises(ValueError, match="SHA-256"):
        load_feature_net("digits")


def test_shipped_assets_are_small_and_documented() -> None:
    for name in ("digits", "mnist"):
        path = feat.asset_path(name)
        if not path.is_file():
            continue
        meta = json.loads(path.with_suffix(".json").read_text())
        assert path.stat().st_size < 1_000_000, f"{path} is {path.stat().st_size} bytes"
        for key in ("test_accuracy", "data", "seed", "sha256", "epochs", "torch_version"):
            assert key in meta, f"{path.with_suffix('.json')} lacks {key!r}"


class _Probe(nn.Module):
    """Stands in for an Inception TorchScript: reports the input it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        return torch.stack([x.mean(dim=(1, 2, 3)), x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)),
                            torch.full_like(x[:, 0, 0, 0], float(x.shape[1])),
                            torch.full_like(x[:, 0, 0, 0], float(h * 1000 + w))], dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_inception_torchscript_path_and_modules(tmp_path: Path) -> None:
    path = tmp_path / "probe.pt"
    torch.jit.save(torch.jit.script(_Probe()), str(path))
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    f = features(x, f"inception:{path}", batch_size=2)
    assert f.shape == (5, 5)
    assert torch.equal(f[:, 3], torch.full((5,), 3.0)), "grey images should be repeated to 3 channels"
    assert torch.equal(f[:, 4], torch.full((5,), 299299.0)), "images should be resized to 299x299"
    ref = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.allclose(f[:, 0], ref.mean(dim=(1, 2, 3)), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not found"):
        features(x, f"inception:{tmp_path / 'missing.pt'}")
    lin = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    out = features(x, lin, batch_size=4)
    with torch.no_grad():
        assert torch.allclose(out, lin(x))
    assert "not comparable with published Inception FIDs" in FEATURE_NOTE
