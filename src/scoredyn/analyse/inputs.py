"""What ``scoredyn analyse`` analyses: a denoiser with its data shape, noise range, default sampler and
data range, and the training / held-out data checked against it.

A model is any denoiser ``D(x, sigma)`` (DESIGN.md §2). What the report needs beyond the function is
read from the model when it carries it (a scoredyn run's ``checkpoint_config``, or attributes
``data_shape``, ``sigma_min``, ``sigma_max``, ``data_range``, ``conditioning``) and otherwise
defaults to EDM's choices (sigma in [0.002, 80], Heun).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_data

#: EDM's noise range (Karras et al. 2022, Table 1), used when a model does not state its own.
EDM_SIGMAS = (0.002, 80.0)
#: The range scoredyn's (and diffusers') image models take their data in.
IMAGE_RANGE = (-1.0, 1.0)
#: The default sampler per conditioning (the one ``scoredyn sample`` uses).
DEFAULT_SAMPLER = {"multiplicative": "annealed_langevin", "unconditional": "unconditional_ode", "edm": "heun"}

Range = tuple[float, float]


@dataclass
class Model:
    """A denoiser and what the report needs to know about it."""

    denoiser: Callable[[Tensor, Any], Tensor]
    data_shape: Optional[tuple[int, ...]]
    sigma_min: float
    sigma_max: float
    sampler: str
    data_range: Optional[Range]  # None: unbounded (2-D toys, feature vectors)
    description: str
    fingerprint: str
    train_data: Optional[dict[str, Any]] = None  # what a scoredyn run records about its training data


def fingerprint_tensor(x: Tensor) -> str:
    """SHA-256 (first 32 hex digits) of a tensor's shape, dtype and bytes."""
    arr = x.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(arr.shape)}|{arr.dtype}|".encode())
    h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def fingerprint_model(denoiser: Any, shape: tuple[int, ...], device: torch.device) -> str:
    """A stable identity of a denoiser: its weights when it is an ``nn.Module`` with any, else its outputs
    on fixed probe points at three noise levels (so cached sections are reused only for the same model)."""
    h = hashlib.sha256(type(denoiser).__name__.encode())
    state = denoiser.state_dict() if isinstance(denoiser, nn.Module) else {}
    if state:
        for k in sorted(state):
            h.update(k.encode())
            h.update(fingerprint_tensor(state[k]).encode())
        return h.hexdigest()[:32]
    gen = torch.Generator().manual_seed(1234)
    probe = torch.randn((4, *shape), generator=gen).to(device)
    with torch.no_grad():
        for s in (0.05, 1.0, 20.0):
            h.update(fingerprint_tensor(denoiser(s * probe, s).float()).encode())
    return h.hexdigest()[:32]


def describe(
    denoiser: Any,
    train: Tensor,
    device: torch.device,
    *,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    data_range: Optional[Range] = None,
    name: Optional[str] = None,
) -> Model:
    """The :class:`Model` of ``denoiser`` for data shaped like ``train``; raises ``ValueError`` when the
    model's own data shape differs from the data's."""
    if not callable(denoiser):
        raise ValueError(f"the model must be a denoiser D(x, sigma), got {type(denoiser).__name__}")
    shape = tuple(int(s) for s in train.shape[1:])
    own = getattr(denoiser, "data_shape", None)
    if own is not None and tuple(own) != shape:
        raise ValueError(
            f"the model takes data of shape {tuple(own)} but the data has points of shape {shape}; pass the data "
            "the model was trained on (same size and channels)"
        )
    cfg = getattr(denoiser, "checkpoint_config", None) or {}
    sd = (cfg.get("train") or {}).get("sigma_dist") or {}
    lo = sigma_min if sigma_min is not None else sd.get("sigma_min", getattr(denoiser, "sigma_min", EDM_SIGMAS[0]))
    hi = sigma_max if sigma_max is not None else sd.get("sigma_max", getattr(denoiser, "sigma_max", EDM_SIGMAS[1]))
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"the model's noise range must satisfy 0 < sigma_min < sigma_max, got [{lo}, {hi}]")
    conditioning = getattr(denoiser, "conditioning", "edm")
    sampler = getattr(denoiser, "default_sampler", None) or DEFAULT_SAMPLER.get(conditioning, "heun")
    rng = data_range if data_range is not None else getattr(denoiser, "data_range", None)
    train_desc = (cfg.get("train") or {}).get("data")
    if rng is None:
        from ..data import IMAGE_NAMES

        trained_on_images = isinstance(train_desc, dict) and train_desc.get("name") in IMAGE_NAMES
        if trained_on_images or len(shape) == 3:
            rng = IMAGE_RANGE
    desc = name or (f"scoredyn run ({conditioning} conditioning)" if cfg else type(denoiser).__name__)
    return Model(
        denoiser=denoiser, data_shape=shape, sigma_min=lo, sigma_max=hi, sampler=sampler,
        data_range=None if rng is None else (float(rng[0]), float(rng[1])), description=desc,
        fingerprint=fingerprint_model(denoiser, shape, device), train_data=train_desc,
    )


def rescale(x: Tensor, source: Range, target: Range) -> Tensor:
    """Map ``x`` linearly from the range ``source`` to ``target``."""
    a, b = (float(v) for v in source)
    lo, hi = (float(v) for v in target)
    if not a < b:
        raise ValueError(f"a data range must be (low, high) with low < high, got {source}")
    return lo + (x - a) * ((hi - lo) / (b - a))


def check_range(x: Tensor, model_range: Optional[Range], what: str) -> None:
    """Refuse data that is not in the model's range: values outside it (by more than 5% of its width),
    or values in its upper half only (e.g. [0, 1] data for a [-1, 1] model)."""
    if model_range is None:
        return
    lo, hi = model_range
    width = hi - lo
    xmin, xmax = float(x.min()), float(x.max())
    hint = ("; pass the range the data is in (CLI: --data-range LOW,HIGH; Python: data_range=(LOW, HIGH)) "
            f"to map it to the model's range [{lo:g}, {hi:g}]")
    if xmin < lo - 0.05 * width or xmax > hi + 0.05 * width:
        raise ValueError(f"{what} values span [{xmin:.4g}, {xmax:.4g}], outside the model's data range [{lo:g}, {hi:g}]"
                         + hint)
    if x.numel() > 16 and xmin >= lo + 0.45 * width:
        raise ValueError(f"{what} values span [{xmin:.4g}, {xmax:.4g}]: only the upper half of the model's data range "
                         f"[{lo:g}, {hi:g}] (data in [0, 1] for a [-1, 1] model?)" + hint)


def prepare(
    model: Model, x: Optional[Tensor], what: str, device: torch.device, data_range: Optional[Range]
) -> Optional[Tensor]:
    """``x`` as float32 on ``device``, mapped from ``data_range`` when given, checked against the model."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    x = check_data(what, x, min_points=2)
    if tuple(x.shape[1:]) != model.data_shape:
        raise ValueError(f"{what} has points of shape {tuple(x.shape[1:])}; the model takes {model.data_shape}")
    x = x.to(device=device, dtype=torch.float32)
    if data_range is not None:
        x = rescale(x, data_range, model.data_range or IMAGE_RANGE)
    check_range(x, model.data_range, what)
    return x


# ------------------------------------------------------------------------------- command line helpers

PathLike = Union[str, Path]


def load_model(spec: str, device: torch.device) -> Any:
    """The denoiser named by ``spec``: a scoredyn run / checkpoint folder or ``diffusers:PATH``
    (``scoredyn.external.cli.load_model``), carrying its data shape, noise range and default sampler."""
    from ..external.cli import DIFFUSERS_PREFIX
    from ..external.cli import load_model as load_external
    from ..train import checkpoint

    if not spec.startswith(DIFFUSERS_PREFIX):
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model {spec!r}: {path} does not exist; expected a scoredyn run folder or "
                                    f"{DIFFUSERS_PREFIX}PATH")
        if not checkpoint.has_checkpoint(path):
            if (path / "model_index.json").is_file() or (path / "config.json").is_file() or (path / "unet").is_dir():
                raise ValueError(f"{path} is not a scoredyn run but looks like a diffusers model; pass it as "
                                 f"{DIFFUSERS_PREFIX}{spec}")
            raise ValueError(
                f"{path} is neither a scoredyn run (no checkpoint with config.json and weights) nor a diffusers model "
                "(no model_index.json or config.json); expected a folder written by `scoredyn train` or "
                f"{DIFFUSERS_PREFIX}PATH")
    ext = load_external(spec, device)
    den = ext.denoiser
    den.data_shape = tuple(ext.data_shape)  # a UNet runs on any size: keep the one it was trained on
    den.sigma_min, den.sigma_max, den.default_sampler = ext.sigma_min, ext.sigma_max, ext.default_sampler
    return den


def load_data(spec: str, *, root: Optional[str], split: str, n: Optional[int], seed: int) -> Tensor:
    """Data named on the command line: a ``scoredyn.data`` name (its ``split``), an image folder or a
    ``.npz`` / ``.npy`` file (read whole, as its training split)."""
    from .. import data

    if spec in data.NAMES:
        return data.load(spec, root=root, split=split, n=n, seed=seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        return data.load("folder", root=path, split="train", n=n, seed=seed)
    if path.suffix.lower() in (".npz", ".npy"):
        return data.load("npz", root=path, split="train", n=n, seed=seed)
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} is neither a data set name ({', '.join(data.NAMES)}) nor an existing path")
    raise ValueError(f"data {spec!r}: expected a data set name, an image folder or a .npz/.npy file")
