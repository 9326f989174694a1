"""Tests of scoredyn.data: toys, digits, MNIST idx, CIFAR-10 (batches, folder, tarball), folders, npz, downloads."""

from __future__ import annotations

import gzip
import hashlib
from scoredyn.data import remote as dl
import io
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import scoredyn.data as D
from scoredyn.data import images as im
from scoredyn.data.toys import gmm2d_parameters



SHARED = Path(os.environ.get("SCOREDYN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
MNIST_DIR = SHARED / "mnist"
CIFAR_TAR = SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.xz"
needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                 reason=f"shared MNIST not found at {MNIST_DIR}")
needs_cifar_tar = pytest.mark.skipif(not CIFAR_TAR.is_file(), reason=f"shared CIFAR-10 tarball not found at {CIFAR_TAR}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREDYN_CACHE", str(tmp_path / "cache"))


def subset(total: int, n: int, seed: int) -> np.ndarray:
    """The documented subset rule, written out independently."""
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float64) / 127.5 - 1.0).float()


# ------------------------------------------------------------------------------------------ toys
@pytest.mark.parametrize("name", D.TOY_NAMES)
def test_toy_shape_determinism_splits(name):
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    x = D.load(name, n=500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert torch.equal(x, D.load(name, n=500, seed=3)), "same seed must give the same draw"
    assert torch.equal(x[:300], D.load(name, n=300, seed=3)), "sample i must not depend on n"
    assert not torch.allclose(x, D.load(name, n=500, seed=4)), "another seed must give another draw"
    test = D.load(name, split="test", n=500, seed=3)
    assert (x - test).abs().min(1).values.max() > 0 and not torch.allclose(x, test), "test split must be a different draw"
    assert D.load(name).shape == (2000, 2)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state), \
        "global RNG state was touched"


@pytest.mark.parametrize("name", D.TOY_NAMES)
def test_toy_unit_scale(name):
    """Documented scaling: mean 0 and trace(Cov)/2 = 1, within 5 standard errors of n = 200,000 samples."""
    n = 200_000
    x = D.load(name, n=n, seed=11).double()
    mean = x.mean(0)
    se_mean = x.std(0) / math.sqrt(n)
    assert bool((mean.abs() < 5 * se_mean).all()), f"{name}: mean {mean.tolist()} vs 5 SE {(5 * se_mean).tolist()}"
    half_sq = (x - mean).pow(2).sum(1) / 2
    tr, se_tr = float(half_sq.mean()), float(half_sq.std()) / math.sqrt(n)
    assert abs(tr - 1.0) < 5 * se_tr, f"{name}: trace(Cov)/2 = {tr:.5f}, expected 1 +- {5 * se_tr:.5f}"


def test_toy_shapes_of_support():
    # checkerboard: in board units (x / (sqrt(3)/2)) every point lies on a dark square: floor(x1) + floor(x2) even
    b = D.load("checkerboard", n=20_000).double() / (math.sqrt(3) / 2)
    parity = (torch.floor(b[:, 0]) + torch.floor(b[:, 1])) % 2
    assert bool((b.abs() <= 2 + 1e-6).all()) and int(parity.sum()) == 0, f"{int(parity.sum())} points off the dark squares"
    # rings: radii cluster at k*c, k = 1..4, with c = sqrt((1 - 0.05^2)/3.75) and radial noise 0.05
    r = D.load("rings", n=20_000).double().norm(dim=1)
    c = math.sqrt((1 - 0.05**2) / 3.75)
    dist = (r[:, None] - c * torch.arange(1, 5, dtype=torch.float64)).abs().min(1).values
    frac = float((dist < 4 * 0.05).double().mean())
    assert frac > 0.999, f"fraction of ring points within 4 noise std of a ring: {frac}"


def _gmm_projection_cdf(a: np.ndarray):
    w, mu, cov = (t.numpy() for t in gmm2d_parameters(torch.float64))
    m = mu @ a
    s = np.sqrt(np.einsum("i,kij,j->k", a, cov, a))
    return lambda t: (w * stats.norm.cdf((np.asarray(t)[..., None] - m) / s)).sum(-1)


def test_gmm2d_samples_follow_the_exact_mixture():
    """1-D projections of a Gaussian mixture are Gaussian mixtures: KS test of 4 projections, n = 20,000."""
    x = D.load("gmm2d", n=20_000, seed=5).double().numpy()
    for ang in (0.0, math.pi / 2, math.pi / 4, 0.3):
        a = np.array([math.cos(ang), math.sin(ang)])
        res = stats.kstest(x @ a, _gmm_projection_cdf(a))
        assert res.pvalue > 1e-3, f"projection angle {ang:.2f}: KS statistic {res.statistic:.4f}, p = {res.pvalue:.2e}"
    w, mu, cov = gmm2d_parameters(torch.float64)
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[None, :]
    assert torch.allclose(mean, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(second, torch.eye(2, dtype=torch.float64), atol=1e-12), f"mixture covariance {second}"


def test_gmm2d_model_moments_match_samples():
    model = D.gmm2d_model(dtype=torch.float64)
    # model moments by quadrature of exp(log_prob) on a grid (midpoint rule, h = 0.04 on [-6, 6]^2; for
    # Gaussians of std >= 0.1 its error is far below the sampling tolerance)
    h = 0.04
    g = torch.arange(-6 + h / 2, 6, h, dtype=torch.float64)
    pts = torch.cartesian_prod(g, g)
    p = model.log_prob(pts).exp() * h * h
    mass = float(p.sum())
    m_model = (p[:, None] * pts).sum(0) / mass
    c = pts - m_model
    cov_model = (p[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0) / mass
    assert abs(mass - 1) < 1e-6, f"model density integrates to {mass}"
    n = 50_000
    x = D.load("gmm2d", n=n, seed=9).double()
    xm = x.mean(0)
    se = x.std(0) / math.sqrt(n)
    assert bool(((xm - m_model).abs() < 5 * se).all()), f"sample mean {xm.tolist()} vs model {m_model.tolist()}, 5 SE {5 * se}"
    xc = x - xm
    prods = xc[:, :, None] * xc[:, None, :]
    cov_s, se_cov = prods.mean(0), prods.std(0) / math.sqrt(n)
    assert bool(((cov_s - cov_model).abs() < 5 * se_cov).all()), \
        f"sample cov {cov_s.tolist()} vs model {cov_model.tolist()} (5 SE {(5 * se_cov).tolist()})"
    # and the model's density equals the mixture of the documented parameters (float64 brute force)
    w, mu, cov = (t.numpy() for t in gmm2d_parameters(torch.float64))
    q = x[:200].numpy()
    ref = np.log(sum(w[k] * stats.multivariate_normal(mu[k], cov[k]).pdf(q) for k in range(len(w))))
    err = float(np.abs(model.log_prob(x[:200]).numpy() - ref).max())
    assert err < 1e-9, f"max |log p_model - log p_ref| = {err:.2e}"


# ---------------------------------------------------------------------------------------- digits
def test_digits_shapes_values_splits_subsets():
    from sklearn.datasets import load_digits

    x, y = D.load_labeled("digits")
    xt, yt = D.load_labeled("digits", split="test")
    assert x.shape == (1500, 1, 8, 8) and xt.shape == (297, 1, 8, 8) and x.dtype == torch.float32
    v = (x + 1) * 8
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0 and torch.equal(v, v.round()), "expected v/8 - 1, v in 0..16"
    assert int(y.min()) == 0 and int(y.max()) == 9 and y.dtype == torch.int64
    ref = load_digits().data
    both = np.concatenate([((x + 1) * 8).reshape(-1, 64).numpy(), ((xt + 1) * 8).reshape(-1, 64).numpy()])
    assert np.array_equal(np.sort(both.view([("", both.dtype)] * 64), axis=0), np.sort(ref.view([("", ref.dtype)] * 64), axis=0)), \
        "train + test must be exactly the 1797 digits"
    xs, ys = D.load_labeled("digits", n=100, seed=7)
    idx = subset(1500, 100, 7)
    assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])
    assert not torch.equal(xs, D.load("digits", n=100, seed=8))
    assert torch.equal(D.load("digits", n=1500), x)


@pytest.mark.parametrize("n", [0, -3, 1501, 2.5, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n="):
        D.load("digits", n=n)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set 'mnits'.*moons.*mnist.*cifar10"):
        D.load("mnits")
    with pytest.raises(ValueError, match="split='val'"):
        D.load("moons", split="val")
    with pytest.raises(ValueError, match="n=0"):
        D.load("moons", n=0)
    with pytest.raises(ValueError, match="seed=-1"):
        D.load("moons", seed=-1)
    with pytest.raises(ValueError, match="size is only supported"):
        D.load("digits", size=4)
    with pytest.raises(ValueError, match="mmap is only supported"):
        D.load("digits", mmap=True)
    with pytest.raises(ValueError, match="generated, not read"):
        D.load("moons", root="/tmp")
    with pytest.raises(ValueError, match="has no labels"):
        D.load_labeled("moons")
    with pytest.raises(ValueError, match="needs root"):
        D.load("folder")


# ----------------------------------------------------------------------------------------- MNIST
@needs_mnist
def test_mnist_shared_checksum_and_content():
    h = hashlib.md5()
    with gzip.open(MNIST_DIR / "train-images-idx3-ubyte.gz", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == "6bbc9ace898e44ae57da46a324031adb", f"uncompressed train-images MD5 {h.hexdigest()}"
    x, y = D.load_labeled("mnist", root=MNIST_DIR)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (60000,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert int(y.min()) == 0 and int(y.max()) == 9 and bool((torch.bincount(y) > 5000).all())
    del x
    # test split against an independent parse of the raw idx bytes (16-byte header, 8-byte label header)
    xt, yt = D.load_labeled("mnist", root=SHARED, split="test")
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    lab = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert struct.unpack(">4I", raw[:16]) == (2051, 10000, 28, 28)
    assert torch.equal(xt, unit(np.frombuffer(raw, np.uint8, offset=16).reshape(10000, 1, 28, 28)))
    assert torch.equal(yt, torch.from_numpy(np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)))
    assert dl.file_md5(MNIST_DIR / "t10k-images-idx3-ubyte.gz", decompress=True) == dl.MNIST_CONTENT_MD5["t10k-images-idx3-ubyte.gz"]


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


def _write_mnist(root: Path, n: int = 6, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for pre in ("train", "t10k"):
        for kind, arr, magic in (("images-idx3", x, 2051), ("labels-idx1", y, 2049)):
            data = _idx_bytes(arr, magic)
            name = f"{pre}-{kind}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_roundtrip(tmp_path, gz):
    x, y = _write_mnist(tmp_path / "mnist", gz=gz)
    xs, ys = D.load_labeled("mnist", root=tmp_path / "mnist", split="test")
    assert torch.equal(xs, unit(x[:, None])) and torch.equal(ys, torch.from_numpy(y.astype(np.int64)))
    xs3, ys3 = D.load_labeled("mnist", root=tmp_path, n=3, seed=2)  # root/mnist is searched too
    idx = subset(6, 3, 2)
    assert torch.equal(xs3, unit(x[idx][:, None])) and torch.equal(ys3, torch.from_numpy(y[idx].astype(np.int64)))


def test_mnist_corrupted_idx(tmp_path):
    x, _ = _write_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    good = f.read_bytes()
    cases = {
        "truncated idx data": good[:-100],
        "truncated idx header": good[:10],
        "magic number 2049": struct.pack(">I", 2049) + good[4:],
        "not an idx file": b"\x12\x34" + good[2:],
        "trailing bytes": good + b"\x00",
    }
    for msg, data in cases.items():
        f.write_bytes(data)
        with pytest.raises(ValueError, match=msg) as e:
            D.load("mnist", root=tmp_path)
        assert "train-images-idx3-ubyte" in str(e.value), str(e.value)
    # gzip: truncated stream, and a corrupted one (CRC / deflate error)
    f.unlink()
    gzf = tmp_path / "train-images-idx3-ubyte.gz"
    blob = gzip.compress(good)
    for data in (blob[: len(blob) // 2], blob[:-8] + bytes(8), blob[:20] + bytes(b ^ 0xFF for b in blob[20:60]) + blob[60:]):
        gzf.write_bytes(data)
        with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz") as e:
            D.load("mnist", root=tmp_path)
        assert "gzip" in str(e.value) or "idx" in str(e.value), str(e.value)
    # labels that do not match the images
    gzf.write_bytes(gzip.compress(good))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5, np.uint8), 2049))
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        D.load("mnist", root=tmp_path)


def test_default_roots(tmp_path, monkeypatch):
    """root=None: the download cache first, then the shared data folder; nothing found -> how to get it."""
    monkeypatch.setenv("SCOREDYN_SHARED_DATA", str(tmp_path / "no-shared"))
    with pytest.raises(FileNotFoundError, match=r"mnist not found.*scoredyn.data.download\('mnist'\)") as e:
        D.load("mnist")
    assert str(tmp_path / "cache" / "mnist") in str(e.value)
    x, _ = _write_mnist(tmp_path / "cache" / "mnist", n=3)
    assert torch.equal(D.load("mnist", split="test"), unit(x[:, None]))
    shared = tmp_path / "shared"
    _write_batches(shared / "cifar10" / "cifar-10-batches-py")  # not a recognised shared layout
    monkeypatch.setenv("SCOREDYN_SHARED_DATA", str(shared))
    with pytest.raises(FileNotFoundError, match="cifar10 not found"):
        D.load("cifar10")
    xb, _ = _write_batches(shared / "cifar-10-batches-py", per_batch=2)
    assert torch.equal(D.load("cifar10", split="test"), unit(xb[10:]))


def test_mnist_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        D.load("mnist", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*download\('mnist', root\)") as e:
        D.load("mnist", root=tmp_path)
    assert str(tmp_path) in str(e.value)


# -------------------------------------------------------------------------------------- CIFAR-10
def _write_batches(d: Path, per_batch: int = 4, protocol: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": b"synthetic", b"data": data, b"labels": labels,
                         b"filenames": [b"a.png"] * per_batch}, f, protocol=protocol)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.array(labels))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_batches(tmp_path, protocol):
    x, y = _write_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    xs, ys = D.load_labeled("cifar10", root=tmp_path)
    assert xs.shape == (20, 3, 32, 32) and xs.dtype == torch.float32
    assert torch.equal(xs, unit(x[:20])) and torch.equal(ys, torch.from_numpy(y[:20]))
    xt, yt = D.load_labeled("cifar10", root=tmp_path / "cifar-10-batches-py", split="test")
    assert torch.equal(xt, unit(x[20:])) and torch.equal(yt, torch.from_numpy(y[20:]))
    idx = subset(20, 7, 1)
    assert torch.equal(D.load("cifar10", root=tmp_path, n=7, seed=1), unit(x[:20][idx]))
    with pytest.raises(ValueError, match="n=21 exceeds the 20"):
        D.load("cifar10", root=tmp_path, n=21)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_and_malformed_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_batches(d)
    marker = tmp_path / "pwned"
    for protocol in (2, 5):
        (d / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=protocol))
        with pytest.raises(ValueError, match=r"data_batch_3.*forbidden global (posix|nt|os)\.system"):
            D.load("cifar10", root=tmp_path)
    (d / "data_batch_3").write_bytes(pickle.dumps(eval, protocol=2))  # builtins.eval
    with pytest.raises(ValueError, match=r"forbidden global (__builtin__|builtins)\.eval"):
        D.load("cifar10", root=tmp_path)
    assert not marker.exists(), "the malicious pickle ran code"
    bad = {
        "expected a dict": [1, 2],
        "expected a uint8 array of shape": {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
        "integers in 0..9": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
    }
    for msg, obj in bad.items():
        (d / "data_batch_3").write_bytes(pickle.dumps(obj))
        with pytest.raises(ValueError, match=msg):
            D.load("cifar10", root=tmp_path)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": 1})[:-5])
    with pytest.raises(ValueError, match="not a valid CIFAR-10 python batch"):
        D.load("cifar10", root=tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        D.load("cifar10", root=tmp_path)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_cifar(seed: int = 0) -> dict[str, np.ndarray]:
    """rel path -> (32, 32, 3) uint8, with classes cat (3), airplane (0), truck (9)."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, k in (("train", 3), ("test", 2)):
        for cls in ("cat", "airplane", "truck"):
            for i in range(k):
                files[f"{split}/{cls}/{i:04d}.png"] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return files


def _expected(files: dict[str, np.ndarray], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = sorted(k for k in files if k.startswith(split + "/"))
    x = np.stack([files[k].transpose(2, 0, 1) for k in names])
    y = [D.CIFAR10_CLASSES.index(k.split("/")[1]) for k in names]
    return unit(x), torch.tensor(y)


def test_cifar_tarball_and_folder(tmp_path, monkeypatch):
    files = _tiny_cifar()
    tar_path = tmp_path / "cifar10-jpeg.tar.xz"
    with tarfile.open(tar_path, "w:xz") as tar:
        for name in ["train/", "test/"] + list(files)[::-1]:  # stream order is not the loader's order
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = _png(files[name])
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for split in ("train", "test"):
        ex, ey = _expected(files, split)
        x, y = D.load_labeled("cifar10", root=tmp_path, split=split)
        assert torch.equal(x, ex) and torch.equal(y, ey), f"{split}: tarball content differs"
    ex, ey = _expected(files, "train")
    idx = subset(9, 4, 3)
    monkeypatch.setenv("SCOREDYN_CACHE", str(tmp_path / "cache2"))  # empty cache: decode and cache the subset only
    x4, y4 = D.load_labeled("cifar10", root=tar_path, n=4, seed=3)
    assert torch.equal(x4, ex[idx]) and torch.equal(y4, ey[idx])
    cached = sorted(p.name for p in (tmp_path / "cache2" / "decoded").iterdir())
    assert len(cached) == 2 and all("-train-n4-s3-" in c for c in cached), cached

    def boom(*a, **k):
        raise AssertionError("archive was read although the decoded arrays are cached")

    monkeypatch.setattr(im, "_read_tar_split", boom)
    assert torch.equal(D.load("cifar10", root=tmp_path, n=4, seed=3), x4)
    monkeypatch.setenv("SCOREDYN_CACHE", str(tmp_path / "cache"))  # holds both full splits from above
    x5, _ = D.load_labeled("cifar10", root=tmp_path, n=5, seed=1)
    assert torch.equal(x5, ex[subset(9, 5, 1)])
    monkeypatch.undo()
    # the same images as an image folder give the same tensors
    folder = tmp_path / "folder"
    for name, arr in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / name)
    xf, yf = D.load_labeled("cifar10", root=folder, n=4, seed=3)
    assert torch.equal(xf, x4) and torch.equal(yf, y4)
    (folder / "train" / "dogs").mkdir()
    Image.fromarray(files["train/cat/0000.png"]).save(folder / "train" / "dogs" / "x.png")
    with pytest.raises(ValueError, match=r"unknown class folder\(s\) \['dogs'\]"):
        D.load("cifar10", root=folder)
    bad = tmp_path / "bad" / "cifar10-jpeg.tar.xz"
    bad.parent.mkdir()
    bad.write_bytes(tar_path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupted or truncated tar archive"):
        D.load("cifar10", root=bad.parent)


@pytest.mark.parametrize("fmt,comp", [("pax", "gz"), ("gnu", ""), ("ustar", "bz2")])
def test_tar_formats_long_names_and_corruption(tmp_path, fmt, comp):
    """Long member names (ustar prefix field, pax 'x' and GNU 'L' headers) and every compression read alike."""
    files = _tiny_cifar(seed=4)
    long_dir = "train/cat/" + "d" * 95 + "/0000.png" if fmt == "ustar" else "train/cat/" + "x" * 120 + ".png"
    files[long_dir] = np.full((32, 32, 3), 7, np.uint8)
    tar_path = tmp_path / f"c.tar{'.' + comp if comp else ''}"
    tformat = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}[fmt]
    with tarfile.open(tar_path, f"w:{comp}", format=tformat) as tar:
        for name, arr in files.items():
            data = _png(arr)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ex, ey = _expected(files, "train")
    x, y = D.load_labeled("cifar10", root=tar_path)
    assert torch.equal(x, ex) and torch.equal(y, ey) and len(x) == 10
    if fmt == "ustar":  # the fast reader handles the prefix field itself; pax/GNU headers go to tarfile
        assert len(im._tar_items_fast(tar_path, "train/")) == 10
    else:
        with pytest.raises(im._NotPlainUstar):
            im._tar_items_fast(tar_path, "train/")
    if fmt == "gnu":  # damage the first header's checksum-protected bytes
        raw = bytearray(tar_path.read_bytes())
        raw[10] ^= 0xFF
        tar_path.write_bytes(bytes(raw))
        shutil.rmtree(tmp_path / "cache")
        with pytest.raises(ValueError, match="corrupted or truncated tar archive"):
            D.load("cifar10", root=tar_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download\('cifar10', root\)"):
        D.load("cifar10", root=tmp_path)


@needs_cifar_tar
def test_cifar_shared_tarball_subset():
    x, y = D.load_labeled("cifar10", root=CIFAR_TAR.parent, n=200, seed=0)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.std()) > 0.3
    # a seeded subset over all 50,000 (not the archive's first members): all ten classes appear
    assert torch.bincount(y, minlength=10).min() > 0, f"class counts {torch.bincount(y).tolist()}"
    assert torch.equal(D.load("cifar10", root=CIFAR_TAR.parent, n=200, seed=0), x)  # from the cache


# ------------------------------------------------------------------------------------ folder / npz
def test_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    arrs = {}
    for cls in ("b", "a"):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(2):
            arrs[f"{cls}/{i}.png"] = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            Image.fromarray(arrs[f"{cls}/{i}.png"]).save(root / f"{cls}/{i}.png")
        arrs[f"{cls}/sub/z.png"] = rng.integers(0, 256, (6, 5), dtype=np.uint8)
        Image.fromarray(arrs[f"{cls}/sub/z.png"]).save(root / f"{cls}/sub/z.png")
    (root / "a" / "notes.txt").write_text("not an image")
    x, y = D.load_labeled("folder", root=root)
    names = sorted(arrs)
    assert x.shape == (6, 1, 6, 5) and torch.equal(x, unit(np.stack([arrs[k][None] for k in names])))
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert D.load("folder", root=root, size=(4, 3)).shape == (6, 1, 4, 3)
    assert D.load("folder", root=root, size=8, n=2, seed=1).shape == (2, 1, 8, 8)
    for bad in (0, (4,), (4, -1), 2.5):
        with pytest.raises(ValueError, match="size="):
            D.load("folder", root=root, size=bad)
    Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).save(root / "loose.png")
    with pytest.raises(ValueError, match="images differ in size.*pass size="):
        D.load("folder", root=root)
    x3 = D.load("folder", root=root, size=7)
    assert x3.shape == (7, 3, 7, 7), "grayscale images are promoted to RGB when a colour image is present"
    with pytest.raises(ValueError, match="no labels found for 'folder'"):
        D.load_labeled("folder", root=root, size=7)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        D.load("folder", root=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load("folder", root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no 'test' sub-folder"):
        D.load("folder", root=root, split="test")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image broken.jpg"):
        D.load("folder", root=root, size=7)


def test_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # channels last
    np.savez(tmp_path / "i.npz", x=imgs, y=np.arange(5))
    x, y = D.load_labeled("npz", root=tmp_path / "i.npz")
    assert torch.equal(x, unit(imgs.transpose(0, 3, 1, 2))) and y.tolist() == [0, 1, 2, 3, 4]
    pts = rng.standard_normal((10, 2)).astype(np.float64)
    np.savez_compressed(tmp_path / "split.npz", x_train=pts, x_test=pts[:3] + 1, y_train=np.zeros(10, np.int64))
    assert torch.equal(D.load("npz", root=tmp_path / "split.npz"), torch.from_numpy(pts).float())
    assert torch.equal(D.load("npz", root=tmp_path / "split.npz", split="test"), torch.from_numpy(pts[:3] + 1).float())
    assert torch.equal(D.load("npz", root=tmp_path / "split.npz", n=4, seed=2), torch.from_numpy(pts[subset(10, 4, 2)]).float())
    np.save(tmp_path / "single.npy", pts.astype(np.float32))
    assert torch.equal(D.load("npz", root=tmp_path / "single.npy"), torch.from_numpy(pts).float())
    bad = pts.copy()
    bad[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(ValueError, match=r"nan.npz: 1 NaN/Inf"):
        D.load("npz", root=tmp_path / "nan.npz")
    np.savez(tmp_path / "multi.npz", a=pts, b=pts)
    with pytest.raises(ValueError, match=r"arrays \['a', 'b'\]; expected 'x_train'"):
        D.load("npz", root=tmp_path / "multi.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="cannot read array"):
        D.load("npz", root=tmp_path / "obj.npz")
    np.savez(tmp_path / "int.npz", x=np.ones((3, 2), np.int32))
    with pytest.raises(ValueError, match="dtype int32"):
        D.load("npz", root=tmp_path / "int.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        D.load("npz", root=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="mmap=True needs an uncompressed .npy"):
        D.load("npz", root=tmp_path / "i.npz", mmap=True)
    np.save(tmp_path / "u8.npy", imgs)
    with pytest.raises(ValueError, match="mmap=True needs float32"):
        D.load("npz", root=tmp_path / "u8.npy", mmap=True)
    np.save(tmp_path / "nan.npy", bad.astype(np.float32))
    with pytest.raises(ValueError, match="NaN/Inf"):
        D.load("npz", root=tmp_path / "nan.npy", mmap=True)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux sharing page-cache pages with private mappings")
def test_npz_mmap_is_file_backed(tmp_path):
    a = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    path = tmp_path / "big.npy"
    np.save(path, a)
    x = D.load("npz", root=path, mmap=True)
    assert torch.equal(x, torch.from_numpy(a))
    w = np.load(path, mmap_mode="r+")  # another writer changes the file: the tensor sees it (no copy was made)
    w[999, 3] = -5.0
    w.flush()
    del w
    assert float(x[999, 3]) == -5.0, "mmap tensor is not backed by the file"
    x[0, 0] = 123.0  # copy-on-write: the file is untouched
    assert float(np.load(path)[0, 0]) == 0.0


# ------------------------------------------------------------------------------ paths / downloads
def test_shared_data_dir_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREDYN_SHARED_DATA", str(tmp_path))
    assert D.shared_data_dir() == tmp_path
    monkeypatch.setenv("SCOREDYN_SHARED_DATA", str(tmp_path / "absent"))
    assert D.shared_data_dir() is None
    assert D.cache_dir() == tmp_path / "cache"


def test_fetch_checks_checksum_atomically(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(b"hello scoredyn" * 1000)
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ValueError, match=f"(?s)nothing was written.*MD5 is {good}, expected 0{{32}}"):
        dl.fetch([src.as_uri()], dest, "0" * 32, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == [], "a failed download left files behind"
    with pytest.raises(OSError, match="could not download"):
        dl.fetch([(tmp_path / "none.bin").as_uri()], dest, good, progress=False)
    assert dl.fetch([(tmp_path / "none.bin").as_uri(), src.as_uri()], dest, good, progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    # a mirror serving wrong MNIST content is refused (content MD5 of the uncompressed idx)
    mirror = tmp_path / "mirror"
    _write_mnist(mirror)
    with pytest.raises(ValueError, match="MD5 of the uncompressed content"):
        D.download("mnist", tmp_path / "m", urls=[mirror.as_uri() + "/"], progress=False)
    assert not any((tmp_path / "m").iterdir())
    with pytest.raises(ValueError, match="cannot download 'digits'"):
        D.download("digits", tmp_path)


def test_archive_extraction_skips_unsafe_members(tmp_path):
    tar_path = tmp_path / "a.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, kind in (("cifar-10-batches-py/data_batch_1", tarfile.REGTYPE), ("../evil", tarfile.REGTYPE),
                           ("/abs", tarfile.REGTYPE), ("cifar-10-batches-py/../../x", tarfile.REGTYPE),
                           ("cifar-10-batches-py/link", tarfile.SYMTYPE), ("other/f", tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with tarfile.open(tar_path) as tar:
        assert [m.name for m in dl._safe_members(tar, dl.CIFAR10_DIR)] == ["cifar-10-batches-py/data_batch_1"]
