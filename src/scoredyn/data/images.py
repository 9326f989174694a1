"""Image data sets read from disk (DESIGN.md §6): MNIST idx files, CIFAR-10 python batches, image
folders, tarballs of images (the JPEG copy of CIFAR-10) and ``.npz`` / ``.npy`` arrays.

Every loader returns ``(images, labels)``: images float32 ``(N, C, H, W)`` in ``[-1, 1]``
(8-bit values ``v`` map to ``v / 127.5 - 1``), labels int64 ``(N,)`` or ``None``.

Subsets: ``n`` selects ``sort(permutation(N)[:n])`` with ``numpy.random.default_rng(seed)``, so a
subset keeps the data set's order, ``n = N`` equals the full set, and every source of one data set
(e.g. CIFAR-10 batches vs. a folder with the same order) picks the same indices. Image folders and
tarballs decode only the selected files.

Safety: CIFAR-10 batches are pickles. They are read with :class:`RestrictedUnpickler`, which
resolves only the few globals that numpy arrays need (``_reconstruct``/``_frombuffer``,
``ndarray``, ``dtype``, and ``_codecs.encode`` restricted to latin-1, which Python 3's protocol 2
uses for bytes); dicts, lists, bytes, str and ints need no globals at all. Any other global
(``os.system``, ``builtins.eval``, ...) is refused before anything is called, then the content is
checked (uint8 ``(N, 3072)`` data, integer labels in 0..9).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib
import io
import lzma
import math
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .._checks import is_int
from .._io import atomic_path
from .remote import CIFAR10_DIR, cache_dir, default_root, missing_hint, shared_data_dir

PathLike = Union[str, "os.PathLike[str]"]
Labeled = tuple[torch.Tensor, Union[torch.Tensor, None]]
Size = Union[int, tuple[int, int], None]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TAR = "cifar10-jpeg.tar.xz"
_GRAY_MODES = {"1", "L", "LA", "La"}
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # Pillow < 9.1 has no Image.Resampling
_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------- common
def subset_indices(total: int, n: int | None, seed: int, what: str) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of size ``n`` of ``range(total)``; ``None`` for all."""
    if n is None:
        return None
    if n > total:
        raise ValueError(f"n={n} exceeds the {total} {what} available; expected 1 <= n <= {total}")
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def _take(a: np.ndarray | None, idx: np.ndarray | None) -> np.ndarray | None:
    return a if a is None or idx is None else a[idx]


# v / 127.5 - 1 computed in float64 and rounded once, so every 8-bit value maps to the nearest float32
_UNIT_LUT = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype(np.float32)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor in ``[-1, 1]`` (``v / 127.5 - 1``, correctly rounded)."""
    return torch.from_numpy(_UNIT_LUT[images])


def _labels_tensor(labels: np.ndarray | None) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def _finish(images: np.ndarray, labels: np.ndarray | None, n: int | None, seed: int, what: str) -> Labeled:
    idx = subset_indices(len(images), n, seed, what)
    return to_unit(_take(images, idx)), _labels_tensor(_take(labels, idx))


def _resolve(name: str, root: PathLike | None, probe: Callable[[Path], Any], expected: str) -> Any:
    """Run ``probe`` on ``root`` (and its usual sub-folders) or on the default locations; first hit wins."""
    if root is not None:
        r = Path(root).expanduser()
        if not r.exists():
            raise FileNotFoundError(f"{name} root {r} does not exist; expected {expected}")
        candidates = [r]
    else:
        shared = shared_data_dir()
        candidates = [default_root(name)] + ([shared] if shared is not None else [])
    for c in candidates:
        hit = probe(c)
        if hit is not None:
            return hit
    raise FileNotFoundError(missing_hint(name, [c for c in candidates if c.exists()] or candidates, expected))


# ------------------------------------------------------------------------------------- idx / MNIST
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_MAGIC = {2051: "idx3 ubyte images", 2049: "idx1 ubyte labels"}


def _open_maybe_gzip(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _read_exact(f: BinaryIO, count: int) -> bytearray:
    """Up to ``count`` bytes, read in bounded chunks (a corrupted header may claim absurd sizes)."""
    buf = bytearray()
    while len(buf) < count:
        chunk = f.read(min(count - len(buf), 1 << 24))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse an idx file (gzip or raw): big-endian magic ``00 00 <type> <ndim>``, ``ndim`` uint32 dims, data.

    A wrong magic number, a truncated header or body, trailing bytes or a corrupted gzip stream
    raise ``ValueError`` naming the file and what was expected.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            head = _read_exact(f, 4)
            if len(head) < 4:
                raise ValueError(f"{path}: truncated idx header ({len(head)} bytes); expected a 4-byte magic number")
            if head[0] or head[1] or head[2] not in _IDX_TYPES or head[3] == 0:
                raise ValueError(
                    f"{path}: not an idx file (magic bytes {bytes(head).hex()}); expected 00 00 <type 08-0e> <ndim>"
                )
            magic = int.from_bytes(head, "big")
            if expected_magic is not None and magic != expected_magic:
                raise ValueError(
                    f"{path}: idx magic number {magic}; expected {expected_magic} ({_IDX_MAGIC.get(expected_magic, 'idx')})"
                )
            ndim, dtype = head[3], np.dtype(_IDX_TYPES[head[2]])
            raw = _read_exact(f, 4 * ndim)
            if len(raw) < 4 * ndim:
                raise ValueError(f"{path}: truncated idx header; expected {ndim} big-endian uint32 dimensions")
            dims = tuple(int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(ndim))
            count = math.prod(dims) * dtype.itemsize
            body = _read_exact(f, count)
            if len(body) < count:
                raise ValueError(
                    f"{path}: truncated idx data: {len(body)} bytes after the header; expected {count} for dims {dims}"
                )
            if f.read(1):
                raise ValueError(f"{path}: trailing bytes after the {count} bytes of data that dims {dims} call for")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupted or truncated gzip stream ({e}); expected a gzip-compressed idx file") from None
    arr = np.frombuffer(body, dtype=dtype).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


_MNIST_STEMS = {"train": "train", "test": "t10k"}


def _mnist_file(d: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")  # the "train-images.idx3-ubyte" spelling of some mirrors
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _probe_mnist(split: str) -> Callable[[Path], Path | None]:
    stem = f"{_MNIST_STEMS[split]}-images-idx3-ubyte"

    def probe(c: Path) -> Path | None:
        for d in (c, c / "mnist", c / "MNIST" / "raw"):
            if _mnist_file(d, stem) is not None:
                return d
        return None

    return probe


def load_mnist(root: PathLike | None, split: str, n: int | None, seed: int) -> Labeled:
    """MNIST from the official idx files (``train-*`` / ``t10k-*``, gzip or not) under ``root``: ``(N, 1, 28, 28)``."""
    pre = _MNIST_STEMS[split]
    expected = f"the idx files {pre}-images-idx3-ubyte[.gz] and {pre}-labels-idx1-ubyte[.gz]"
    d = _resolve("mnist", root, _probe_mnist(split), expected)
    img_path = _mnist_file(d, f"{pre}-images-idx3-ubyte")
    lbl_path = _mnist_file(d, f"{pre}-labels-idx1-ubyte")
    if lbl_path is None:
        raise FileNotFoundError(f"{d} has {img_path.name} but no {pre}-labels-idx1-ubyte[.gz]; expected both")  # type: ignore[union-attr]
    images = read_idx(img_path, 2051)  # type: ignore[arg-type]
    labels = read_idx(lbl_path, 2049)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: images of shape {images.shape}; expected (N, 28, 28)")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path.name}")  # type: ignore[union-attr]
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lbl_path}: label {int(labels.max())} out of range; expected digits 0..9")
    return _finish(images[:, None], labels, n, seed, f"MNIST {split} images")


# -------------------------------------------------------------------------- scikit-learn digits
# a fixed permutation (independent of `seed`) puts 1500 images in train and the other 297 in test
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TRAIN = 1500


def load_digits(root: PathLike | None, split: str, n: int | None, seed: int) -> Labeled:
    """scikit-learn's bundled 8x8 digits (values 0..16 -> ``v / 8 - 1``): ``(N, 1, 8, 8)``."""
    if root is not None:
        raise ValueError(f"digits are bundled with scikit-learn; got root={root!r}, expected None")
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(x))
    part = np.sort(perm[:_DIGITS_TRAIN] if split == "train" else perm[_DIGITS_TRAIN:])
    sub = subset_indices(len(part), n, seed, f"digits {split} images")
    idx = part if sub is None else part[sub]
    images = torch.from_numpy(x[idx].reshape(-1, 1, 8, 8)).to(torch.float32).div_(8.0).sub_(1.0)
    return images, torch.from_numpy(y[idx].astype(np.int64))


# ------------------------------------------------------------------------------ CIFAR-10 batches
def _numpy_global(submodule: str, name: str) -> Any:
    for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


def _latin1_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(obj, str) or encoding != "latin1":
        raise ForbiddenGlobal(f"_codecs.encode is only allowed on str with latin1, got {type(obj).__name__}, {encoding!r}")
    return obj.encode("latin1")


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside :class:`RestrictedUnpickler`'s allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: builtin containers and numpy arrays only; every other global is refused."""

    _ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        get = self._ALLOWED.get((module, name))
        if get is None:
            raise ForbiddenGlobal(
                f"forbidden global {module}.{name}; a data pickle may only hold dicts, lists, bytes, str, ints "
                "and numpy arrays"
            )
        return get()


def read_cifar_batch(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR-10 python batch -> uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise ValueError(f"{path}: refused to unpickle: {e}") from None
    except (OSError, MemoryError):
        raise
    except Exception as e:  # a malformed pickle can fail in many ways; all mean "not a CIFAR batch"
        raise ValueError(f"{path}: not a valid CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: unpickled a {type(obj).__name__}; expected a dict with b'data' and b'labels'")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' is {desc}; expected a uint8 array of shape (N, 3072)")
    try:
        lab = np.asarray(labels)
    except Exception:
        lab = np.asarray([])
    if lab.dtype.kind not in "iu" or lab.shape != (data.shape[0],) or (lab.size and (lab.min() < 0 or lab.max() > 9)):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers in 0..9, got {type(labels).__name__}")
    return data.reshape(-1, 3, 32, 32), lab.astype(np.int64)


def load_cifar_batches(d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All batches of a split from a ``cifar-10-batches-py`` folder."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [f for f in names if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} lacks {', '.join(missing)}; expected the official batches {', '.join(names)}")
    parts = [read_cifar_batch(d / f) for f in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- image files / folders
def _check_size(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        hw = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:
        hw = ()
    if len(hw) != 2 or not all(is_int(v) and v > 0 for v in hw):
        raise ValueError(f"size={size!r}; expected a positive int or a (height, width) pair of positive ints")
    return hw  # type: ignore[return-value]


def _decode(src: Path | bytes, name: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image -> uint8 ``(H, W, C)``, C = 1 for grayscale modes, else 3 (alpha dropped)."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im = im.convert("L" if im.mode in _GRAY_MODES else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = ImageOps.fit(im, (size[1], size[0]), method=_BICUBIC)
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode image {name} ({e}); expected a readable {'/'.join(IMAGE_EXTS)} file") from None
    return a[:, :, None] if a.ndim == 2 else a


def _stack(arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Decoded ``(H, W, C)`` images -> uint8 ``(N, C, H, W)``; grayscale is promoted to RGB if any is colour."""
    channels = max(a.shape[2] for a in arrays)
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), channels, h, w), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != (h, w):
            raise ValueError(
                f"images differ in size: {names[0]} is {h}x{w} but {names[i]} is {a.shape[0]}x{a.shape[1]}; "
                "pass size=... to resize them to a common size"
            )
        out[i] = a.transpose(2, 0, 1)  # a 1-channel image broadcasts to RGB
    return out


def _class_labels(names: Sequence[str], classes: Sequence[str] | None, where: str) -> np.ndarray | None:
    """Labels from the first folder of each relative path; ``None`` if some image has no class folder."""
    parts = [PurePosixPath(s).parts for s in names]
    if not all(len(p) >= 2 for p in parts):
        if classes is not None:
            raise ValueError(f"{where}: images outside class folders; expected <class>/<image> with classes {list(classes)}")
        return None
    found = sorted({p[0] for p in parts})
    table = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in table]
    if unknown:
        raise ValueError(f"{where}: unknown class folder(s) {unknown}; expected {table}")
    index = {c: i for i, c in enumerate(table)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64)


def _decode_selected(items: Sequence[tuple[str, Path | bytes]], labels: np.ndarray | None, n: int | None, seed: int,
                     size: tuple[int, int] | None, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    idx = subset_indices(len(items), n, seed, what)
    sel = range(len(items)) if idx is None else idx
    names = [items[i][0] for i in sel]
    return _stack([_decode(items[i][1], items[i][0], size) for i in sel], names), _take(labels, idx)


def _split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise FileNotFoundError(f"{root} has no '{split}' sub-folder; expected {root / split} holding the {split} images")


def read_folder(root: PathLike, split: str, n: int | None, seed: int, size: Size = None,
                classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 ``(N, C, H, W)`` images of a folder (recursive, sorted relative paths) and class-folder labels.

    ``root/<split>`` is used when it exists (``split="train"`` falls back to ``root`` itself).
    Labels are the index of each image's top-level sub-folder among the sorted folder names (or in
    ``classes``), ``None`` when some image lies directly in the folder. Images of different sizes
    need ``size`` (center crop to the aspect ratio, then bicubic resize).
    """
    r = Path(root).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"image folder {r} does not exist or is not a folder")
    base = _split_dir(r, split)
    paths = sorted(
        (p.relative_to(base).as_posix(), p) for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
    )
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTS)}) found under {base}")
    labels = _class_labels([p[0] for p in paths], classes, str(base))
    return _decode_selected(paths, labels, n, seed, _check_size(size), f"images under {base}")


def load_folder(root: PathLike, split: str, n: int | None, seed: int, size: Size = None) -> Labeled:
    """:func:`read_folder` scaled to [-1, 1]."""
    x, y = read_folder(root, split, n, seed, size)
    return to_unit(x), _labels_tensor(y)


# ---------------------------------------------------------------------------------------- tarballs
class _NotPlainUstar(Exception):
    """The archive uses pax / GNU extensions; read it with :mod:`tarfile` instead."""


_COMPRESSED_MAGIC = ((b"\xfd7zXZ\x00", lzma.open), (b"\x1f\x8b", gzip.open), (b"BZh", bz2.open))


def _open_decompressed(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, opener in _COMPRESSED_MAGIC:
        if head.startswith(magic):
            return opener(path, "rb")  # type: ignore[no-any-return]
    return open(path, "rb")


def _iter_ustar(f: BinaryIO, path: Path) -> Iterator[tuple[str, int]]:
    """``(name, size)`` of each regular member of a plain ustar/v7 stream, positioned at its data.

    About 10x faster than :mod:`tarfile` per member (which matters for 60,000 tiny JPEGs); the
    caller must read or skip ``size`` bytes plus padding to the next 512-byte block.
    """
    while True:
        h = f.read(512)
        if len(h) < 512 or not any(h):
            if h and any(h):
                raise ValueError(f"{path}: corrupted or truncated tar archive (short header block)")
            return
        stored = h[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(h) - sum(h[148:156]) + 8 * 32:
            raise ValueError(f"{path}: corrupted or truncated tar archive (header checksum mismatch)")
        kind = h[156:157]
        if kind in (b"x", b"g", b"L", b"K") or h[124] & 0x80:
            raise _NotPlainUstar
        name = h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if h[257:263] == b"ustar\0" and h[345]:
            name = h[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if kind in (b"0", b"\0", b"7"):
            yield name, size
        else:  # links, folders, devices: skip whatever data they carry
            f.read(size + -size % 512)


def _tar_items_fast(path: Path, prefix: str) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    with _open_decompressed(path) as f:
        for name, size in _iter_ustar(f, path):
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{path}: corrupted or truncated tar archive (member {name} cut short)")
            f.read(-size % 512)
            name = name[2:] if name.startswith("./") else name
            if name.startswith(prefix) and PurePosixPath(name).suffix.lower() in IMAGE_EXTS:
                found.append((name[len(prefix) :], data))
    return found


def _tar_items_tarfile(path: Path, prefix: str) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and name.startswith(prefix) and PurePosixPath(name).suffix.lower() in IMAGE_EXTS:
                f = tar.extractfile(m)
                if f is not None:
                    found.append((name[len(prefix) :], f.read()))
    return found


def _read_tar_split(path: Path, split: str) -> list[tuple[str, bytes]]:
    """``(name relative to <split>/, bytes)`` of the image members under ``<split>/``, sorted, in one streaming pass."""
    prefix = split + "/"
    try:
        try:
            found = _tar_items_fast(path, prefix)
        except _NotPlainUstar:
            found = _tar_items_tarfile(path, prefix)
    except (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        msg = str(e) if str(path) in str(e) else f"{path}: corrupted or truncated tar archive ({e})"
        raise ValueError(msg) from None
    if not found:
        raise ValueError(f"{path}: no images under '{prefix}'; expected the layout {prefix}<class>/<image>")
    return sorted(found)


def _cache_files(path: Path, split: str, n: int | None, seed: int) -> tuple[Path, Path]:
    st = path.stat()
    sub = "all" if n is None else f"n{n}-s{seed}"
    ident = f"{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}|{sub}"
    tag = f"{path.name}-{split}-{sub}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    d = cache_dir() / "decoded"
    return d / f"{tag}.images.npy", d / f"{tag}.labels.npy"


def _load_cached(files: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray] | None:
    if not (files[0].is_file() and files[1].is_file()):
        return None
    try:
        x, y = np.load(files[0], allow_pickle=False), np.load(files[1], allow_pickle=False)
    except (OSError, ValueError):
        return None
    return (x, y) if x.dtype == np.uint8 and x.ndim == 4 and y.shape == (x.shape[0],) else None


def _save_cached(files: tuple[Path, Path], x: np.ndarray, y: np.ndarray) -> None:
    try:
        for dest, arr in ((files[1], y), (files[0], x)):  # images last: their presence marks a complete entry
            with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {files[0].parent} ({e}); continuing without it")


def read_image_tar(path: Path, split: str, n: int | None, seed: int,
                   classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and labels of a tarball laid out as ``<split>/<class>/<image>``, cached as ``.npy``.

    Members are sorted by name, the subset is chosen as everywhere else and only it is decoded.
    The decoded arrays go to ``cache_dir()/decoded`` (atomic writes), keyed by the archive's path,
    size and mtime, the split and ``(n, seed)``; a later call (or one with ``n`` when the full split
    is cached) reads them back without opening the archive.
    """
    files = _cache_files(path, split, n, seed)
    hit = _load_cached(files)
    if hit is None and n is not None:
        full = _load_cached(_cache_files(path, split, None, seed))
        if full is not None:
            idx = subset_indices(len(full[0]), n, seed, f"images under '{split}/' in {path}")
            return full[0][idx], full[1][idx]
    if hit is not None:
        return hit
    items = _read_tar_split(path, split)
    labels = _class_labels([s for s, _ in items], classes, f"{path}:{split}/")
    if labels is None:
        raise ValueError(f"{path}: images directly under '{split}/'; expected {split}/<class>/<image>")
    x, y = _decode_selected(items, labels, n, seed, None, f"images under '{split}/' in {path}")
    _save_cached(files, x, y)
    return x, y  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- CIFAR-10
def _probe_cifar10(split: str) -> Callable[[Path], tuple[str, Path] | None]:
    def probe(c: Path) -> tuple[str, Path] | None:
        if c.is_file():
            return ("tar", c)
        for d in (c / CIFAR10_DIR, c):
            if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
                return ("batches", d)
        for t in (c / CIFAR10_TAR, c / "cifar10-jpeg" / CIFAR10_TAR):
            if t.is_file():
                return ("tar", t)
        if (c / split).is_dir():
            return ("folder", c)
        return None

    return probe


def load_cifar10(root: PathLike | None, split: str, n: int | None, seed: int) -> Labeled:
    """CIFAR-10 ``(N, 3, 32, 32)`` from the official python batches, an image folder or the JPEG tarball."""
    expected = (
        f"one of: {CIFAR10_DIR}/data_batch_1..5 + test_batch (official python batches), "
        f"{split}/<class>/<image> (image folder), or {CIFAR10_TAR} with {split}/<class>/*.jpg"
    )
    kind, where = _resolve("cifar10", root, _probe_cifar10(split), expected)
    what = f"CIFAR-10 {split} images"
    if kind == "batches":
        x, y = load_cifar_batches(where, split)
        idx = subset_indices(len(x), n, seed, what)
        x, y = _take(x, idx), _take(y, idx)
    elif kind == "folder":
        x, y = read_folder(where, split, n, seed, classes=CIFAR10_CLASSES)
    else:
        x, y = read_image_tar(where, split, n, seed, classes=CIFAR10_CLASSES)
    if x.shape[1:] != (3, 32, 32):
        raise ValueError(f"CIFAR-10 from {where}: images of shape {x.shape[1:]}; expected (3, 32, 32)")
    return to_unit(x), _labels_tensor(y)


# ------------------------------------------------------------------------------------- npz / npy
class _Refused(Exception):
    """A readable file whose content we refuse (raised as ValueError outside the reading block)."""


def _array_keys(keys: Sequence[str], split: str, path: Path) -> tuple[str, str | None]:
    if f"x_{split}" in keys:
        return f"x_{split}", next((k for k in (f"y_{split}", f"labels_{split}") if k in keys), None)
    if split == "train":
        label = next((k for k in ("y", "labels") if k in keys), None)
        if "x" in keys:
            return "x", label
        if len(keys) == 1:
            return keys[0], None
    raise _Refused(
        f"{path}: arrays {sorted(keys)}; expected 'x_{split}'"
        + (", 'x' or a single array" if split == "train" else f" for split {split!r}")
    )


def _check_finite_chunked(a: np.ndarray, path: Path) -> None:
    rows = max(1, (1 << 24) // max(1, a[0].size * a.itemsize)) if a.ndim and len(a) else 1
    bad = sum(int((~np.isfinite(a[i : i + rows])).sum()) for i in range(0, len(a), rows))
    if bad:
        raise ValueError(f"{path}: {bad} NaN/Inf value(s) out of {a.size}; expected finite data")


def _image_layout(a: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)`` -> ``(N, 1, H, W)``; channels-last ``(N, H, W, C)`` with C in 1/3/4 -> ``(N, C, H, W)``."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[3] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        return a.transpose(0, 3, 1, 2)
    return a


def load_array(root: PathLike, split: str, n: int | None, seed: int, mmap: bool = False) -> Labeled:
    """Data from a ``.npz`` / ``.npy`` file: uint8 arrays are images (scaled to [-1, 1], channels first),
    float arrays are returned as stored (float32), anything else is refused.

    In a ``.npz`` the data is ``x_<split>`` if present, else (train only) ``x`` or the single array;
    labels ``y_<split>``/``y``/``labels``. ``mmap=True`` (``.npy`` holding float32 only) returns a
    tensor backed by ``np.load(mmap_mode="c")``: pages are read lazily and shared with the page
    cache, and writes to the tensor stay private (copy-on-write; mode ``"r"`` would give a read-only
    array that torch cannot wrap safely). Taking a subset ``n`` copies the selected rows.
    """
    path = Path(root).expanduser()
    if path.is_dir():
        raise ValueError(f"array file {path} is a directory; expected a .npz or .npy file (an image folder is data set 'folder')")
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist; expected a .npz or .npy file")
    labels: np.ndarray | None = None
    try:
        obj = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj as z:
                if mmap:
                    raise _Refused(f"{path}: mmap=True needs an uncompressed .npy file (np.load cannot memory-map a .npz)")
                key, label_key = _array_keys(list(z.keys()), split, path)
                a = z[key]
                labels = z[label_key] if label_key is not None else None
        elif split != "train":
            raise _Refused(f"{path}: a .npy file holds one array, the 'train' split; got split={split!r}")
        else:
            a = obj
    except _Refused as e:
        raise ValueError(str(e)) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read array ({e}); expected a numeric .npz/.npy without pickled objects") from None
    if len(a.shape) < 1 or a.shape[0] == 0:
        raise ValueError(f"{path}: array of shape {a.shape}; expected (N, ...) with N >= 1")
    if labels is not None and labels.shape != (a.shape[0],):
        raise ValueError(f"{path}: labels of shape {labels.shape}; expected ({a.shape[0]},)")
    idx = subset_indices(a.shape[0], n, seed, f"rows in {path}")
    if a.dtype == np.uint8:
        if mmap:
            raise ValueError(f"{path}: mmap=True needs float32 data (uint8 would be rescaled, i.e. copied); got uint8")
        return to_unit(_image_layout(_take(a, idx))), _labels_tensor(_take(labels, idx))
    if a.dtype.kind != "f":
        raise ValueError(f"{path}: dtype {a.dtype}; expected uint8 images or floating-point data")
    if mmap and a.dtype != np.float32:
        raise ValueError(f"{path}: mmap=True needs float32 data (got {a.dtype}, which would be converted, i.e. copied)")
    _check_finite_chunked(a, path)
    sel = _take(a, idx)
    x = torch.from_numpy(sel) if (mmap and idx is None) else torch.from_numpy(np.array(sel, dtype=np.float32))
    return x, _labels_tensor(_take(labels, idx))
