"""Where data files live and how they get there: the shared development data, the cache, atomic
writes, and downloads of the official MNIST / CIFAR-10 files with checksums (DESIGN.md §6).

Downloads are for users; nothing in the test-suite or in :func:`scoredyn.data.load` ever calls them
implicitly. Checksums:

* MNIST: MD5 of the *uncompressed* idx content. Mirrors re-wrap the gzip stream (a different
  timestamp or compression level changes the ``.gz`` MD5), while the content MD5 identifies the
  official data. The train-images value is the one quoted in ``../shared/data/README.md``; the
  other three were computed from the files that README states are the official bytes, and agree
  with the values published by other projects (e.g. secml, several CMake download scripts).
* CIFAR-10: MD5 of ``cifar-10-python.tar.gz`` and of every extracted batch, as published on
  https://www.cs.toronto.edu/~kriz/cifar.html and used by torchvision.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Sequence

from .._io import atomic_path

MNIST_URLS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# file name -> MD5 of its uncompressed idx content
MNIST_CONTENT_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

CIFAR10_URLS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCH_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

DOWNLOADABLE = ("mnist", "cifar10")
_CHUNK = 1 << 20


def shared_data_dir() -> Path | None:
    """The development data folder: ``$SCOREDYN_SHARED_DATA``, else ``<repo>/../shared/data``; ``None`` if absent."""
    env = os.environ.get("SCOREDYN_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    # src/scoredyn/data/remote.py -> parents[3] is the repository root
    p = Path(__file__).resolve().parents[4] / "shared" / "data"
    return p if p.is_dir() else None


def cache_dir() -> Path:
    """Decoded-array cache and default download root: ``$SCOREDYN_CACHE``, else ``~/.cache/scoredyn``."""
    env = os.environ.get("SCOREDYN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scoredyn"


def default_root(name: str) -> Path:
    """Where :func:`download` puts ``name`` when no root is given (``cache_dir() / name``)."""
    return cache_dir() / name


def file_md5(path: Path, *, decompress: bool = False) -> str:
    """MD5 of a file, streamed in chunks; with ``decompress`` the MD5 of its gzip-decompressed content."""
    h = hashlib.md5()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_hashed(src: BinaryIO, dst: BinaryIO, total: int | None, desc: str, progress: bool) -> str:
    from tqdm.auto import tqdm

    h = hashlib.md5()
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            dst.write(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


class _Mismatch(Exception):
    """A mirror served bytes with the wrong checksum."""


def fetch(urls: Sequence[str], dest: Path, md5: str, *, content_md5: bool = False, progress: bool = True) -> Path:
    """Download the first reachable of ``urls`` to ``dest`` atomically and check its MD5.

    With ``content_md5`` the checksum is that of the gzip-decompressed content. Mirrors are tried in
    turn; if none gives the right bytes, nothing is left at ``dest`` and a ``ValueError`` (some mirror
    served a wrong checksum) or ``OSError`` (none reachable) lists what each one did.
    """
    dest = Path(dest)
    errors: list[str] = []
    mismatch = False
    for url in urls:
        try:
            with atomic_path(dest) as tmp:
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                    length = r.headers.get("Content-Length")
                    got = _copy_hashed(r, f, int(length) if length else None, dest.name, progress)
                if content_md5:
                    got = file_md5(tmp, decompress=True)
                if got != md5:
                    what = "MD5 of the uncompressed content" if content_md5 else "MD5"
                    raise _Mismatch(f"{url}: {what} is {got}, expected {md5}")
            return dest
        except _Mismatch as e:
            mismatch = True
            errors.append(str(e))
        except (OSError, EOFError, zlib.error) as e:  # unreachable mirror, HTTP error, broken gzip
            errors.append(f"{url}: {type(e).__name__}: {e}")
    msg = f"could not download {dest.name} (nothing was written); tried:\n  " + "\n  ".join(errors)
    raise ValueError(msg) if mismatch else OSError(msg)


def _safe_members(tar: tarfile.TarFile, prefix: str) -> list[tarfile.TarInfo]:
    """Regular files and folders under ``prefix/`` with no absolute or ``..`` components."""
    out = []
    for m in tar.getmembers():
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts or not parts or parts[0] != prefix:
            continue
        if m.isfile() or m.isdir():
            out.append(m)
    return out


def _download_mnist(root: Path, urls: Sequence[str] | None, progress: bool) -> Path:
    for fname, md5 in MNIST_CONTENT_MD5.items():
        dest = root / fname
        if dest.is_file() and file_md5(dest, decompress=True) == md5:
            continue
        fetch([u + fname for u in (urls or MNIST_URLS)], dest, md5, content_md5=True, progress=progress)
    return root


def _download_cifar10(root: Path, urls: Sequence[str] | None, progress: bool) -> Path:
    target = root / CIFAR10_DIR
    if target.is_dir() and all(
        (target / f).is_file() and file_md5(target / f) == m for f, m in CIFAR10_BATCH_MD5.items()
    ):
        return root
    archive = root / CIFAR10_ARCHIVE
    if not (archive.is_file() and file_md5(archive) == CIFAR10_ARCHIVE_MD5):
        fetch([u + CIFAR10_ARCHIVE for u in (urls or CIFAR10_URLS)], archive, CIFAR10_ARCHIVE_MD5, progress=progress)
    tmpdir = Path(tempfile.mkdtemp(prefix=".cifar10-extract.", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar, CIFAR10_DIR)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmpdir, members=members, **kwargs)
        for f, m in CIFAR10_BATCH_MD5.items():
            got = file_md5(tmpdir / CIFAR10_DIR / f) if (tmpdir / CIFAR10_DIR / f).is_file() else "missing"
            if got != m:
                raise ValueError(f"{CIFAR10_ARCHIVE}: extracted {f} has MD5 {got}, expected {m}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmpdir / CIFAR10_DIR, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return root


def download(name: str, root: str | os.PathLike[str] | None = None, *, urls: Sequence[str] | None = None,
             progress: bool = True) -> Path:
    """Download the official ``mnist`` idx files or ``cifar10`` python batches into ``root`` and verify them.

    ``root`` defaults to :func:`default_root` (``$SCOREDYN_CACHE/<name>``), where :func:`scoredyn.data.load`
    looks when it is given no root. ``urls`` overrides the list of base URLs (mirrors) tried in
    order. Files already present with the right checksum are kept. Returns the root, to pass to
    ``load(name, root=...)``.
    """
    if name not in DOWNLOADABLE:
        raise ValueError(f"cannot download {name!r}; downloadable datasets: {', '.join(DOWNLOADABLE)}")
    dest = Path(root).expanduser() if root is not None else default_root(name)
    dest.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        return _download_mnist(dest, urls, progress)
    return _download_cifar10(dest, urls, progress)


def missing_hint(name: str, searched: Sequence[Path], expected: str) -> str:
    """The message of a ``FileNotFoundError`` for a dataset that is not on disk: where and how to get it."""
    where = ", ".join(str(p) for p in searched) if searched else "(no candidate folder exists)"
    return (
        f"{name} not found; looked in {where}. Expected {expected}. Get the official files with "
        f"scoredyn.data.download({name!r}, root) and pass root=..., or call scoredyn.data.download({name!r}) "
        f"to put them in {default_root(name)} where load() looks by default"
    )
