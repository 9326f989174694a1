"""Data sets for scoredyn (DESIGN.md §6): 2-D toys with exact models, scikit-learn digits, MNIST,
CIFAR-10, image folders and arrays, all as float32 tensors; images ``(N, C, H, W)`` in ``[-1, 1]``.

>>> x = load("moons", n=1000, seed=1)                       # (1000, 2), unit scale
>>> x, y = load_labeled("mnist", root="data/mnist", split="test")   # (10000, 1, 28, 28), labels
>>> download("cifar10")                                      # official batches into the cache; then load("cifar10")
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .._checks import check_count
from . import images as _images
from .remote import cache_dir, download, shared_data_dir
from .images import CIFAR10_CLASSES, Labeled, PathLike, Size
from .toys import TOYS, gmm2d_model, gmm2d_parameters, sample_toy

__all__ = [
    "NAMES", "TOY_NAMES", "LABELED_NAMES", "CIFAR10_CLASSES", "load", "load_labeled", "load_labels",
    "gmm2d_model", "gmm2d_parameters", "shared_data_dir", "cache_dir", "download",
]

TOY_NAMES = tuple(TOYS)
IMAGE_NAMES = ("digits", "mnist", "cifar10", "folder", "npz")
NAMES = TOY_NAMES + IMAGE_NAMES
LABELED_NAMES = IMAGE_NAMES
SPLITS = ("train", "test")


def _needs_root(name: str, root: PathLike | None) -> PathLike:
    if root is None:
        kind = "an image folder" if name == "folder" else "a .npz or .npy file"
        raise ValueError(f"load({name!r}) needs root=<path to {kind}>")
    return root


def _dispatch(name: str, root: PathLike | None, split: str, n: int | None, seed: int, size: Size,
              mmap: bool) -> Labeled:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")
    if name != "folder" and split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    n = check_count("n", n, none="all")
    seed = check_count("seed", seed, least=0)
    if size is not None and name != "folder":
        raise ValueError(f"size is only supported by 'folder', not {name!r}")
    if mmap and name != "npz":
        raise ValueError(f"mmap is only supported by 'npz', not {name!r}")
    n = None if n is None else int(n)
    seed = int(seed)
    if name in TOYS:
        if root is not None:
            raise ValueError(f"{name!r} is generated, not read from disk; got root={root!r}, expected None")
        return sample_toy(name, n, seed, split), None
    if name == "folder":
        return _images.load_folder(_needs_root(name, root), split, n, seed, size)
    if name == "npz":
        return _images.load_array(_needs_root(name, root), split, n, seed, mmap=mmap)
    loaders: dict[str, Callable[[PathLike | None, str, int | None, int], Labeled]] = {
        "digits": _images.load_digits, "mnist": _images.load_mnist, "cifar10": _images.load_cifar10,
    }
    return loaders[name](root, split, n, seed)


def load(name: str, root: PathLike | None = None, split: str = "train", n: int | None = None, seed: int = 0, *,
         size: Size = None, mmap: bool = False) -> torch.Tensor:
    """Load data set ``name`` as a float32 tensor: 2-D points ``(N, 2)`` or images ``(N, C, H, W)`` in [-1, 1].

    Names: toys ``moons``, ``swissroll``, ``checkerboard``, ``rings``, ``gmm2d`` (generated from
    ``seed``; ``n`` points, default 2000; ``split="test"`` is an independent draw; see
    :mod:`scoredyn.data.toys` for the scaling); ``digits`` (scikit-learn 8x8, 1500 train / 297 test);
    ``mnist`` (official idx files under ``root``); ``cifar10`` (official python batches, an image
    folder ``<split>/<class>/*`` or ``cifar10-jpeg.tar.xz`` under ``root``); ``folder`` (any image
    folder, recursive, sorted paths; ``root/<split>`` when it exists; top-level class sub-folders
    give labels; ``size`` = int or (H, W) center-crops and resizes); ``npz`` (a ``.npz``/``.npy`` file, ``mmap`` to memory-map a float32
    ``.npy``). With ``root=None`` mnist/cifar10 are looked for in the download cache
    (``scoredyn.data.download(name)``) and then in :func:`shared_data_dir`.

    For stored data sets ``n`` picks a seeded random subset, kept in data-set order (see
    :mod:`scoredyn.data.images`); ``n`` larger than the data set is an error.
    """
    return _dispatch(name, root, split, n, seed, size, mmap)[0]


def load_labeled(name: str, root: PathLike | None = None, split: str = "train", n: int | None = None,
                 seed: int = 0, *, size: Size = None, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load` plus int64 class labels ``(N,)`` (digits, mnist, cifar10, class folders, npz with labels)."""
    if name not in LABELED_NAMES:
        raise ValueError(f"{name!r} has no labels; labeled data sets: {', '.join(LABELED_NAMES)}")
    x, y = _dispatch(name, root, split, n, seed, size, mmap)
    if y is None:
        how = "images in class sub-folders <class>/<image>" if name == "folder" else "a 'y' or 'labels' array"
        raise ValueError(f"no labels found for {name!r} at {root}; expected {how}")
    return x, y


def load_labels(name: str, root: PathLike | None = None, split: str = "train", n: int | None = None,
                seed: int = 0) -> torch.Tensor:
    """The labels of :func:`load_labeled` alone."""
    return load_labeled(name, root, split, n, seed)[1]
