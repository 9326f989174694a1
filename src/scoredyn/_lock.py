"""One writer per folder: an advisory ``fcntl.flock`` on ``<folder>/.lock`` holding the writer's PID.

    with lock_folder(run_dir, "run folder"):
        ...   # a second process calling lock_folder(run_dir) now gets FolderBusy naming our PID

The kernel drops the lock when its holder exits, however it dies (kill -9 included), so a lock
file left behind never blocks anyone: only a live holder does. :func:`pid_alive` tells whether the
process that named a temporary file is still running (stale temporaries of dead owners may go).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator, Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is then the user's job
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]
LOCK_NAME = ".lock"


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie counts as alive until reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An acquired lock on ``folder`` (see :func:`lock_folder`); :meth:`release` drops it."""

    def __init__(self, folder: Path, fd: Optional[int]) -> None:
        self.folder, self._fd = folder, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - a forgotten lock is released with the object
        with contextlib.suppress(Exception):
            self.release()


def acquire_folder(folder: PathLike, what: str = "folder") -> FolderLock:
    """Create ``folder`` if needed and take its lock, or raise :class:`FolderBusy` naming the holder's PID.

    ``what`` names the folder in messages ("run folder", "study folder"). Raises ``ValueError`` when
    ``folder`` exists and is not a directory.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is an existing file; expected a folder (or a path that does not exist yet)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover
        return FolderLock(folder, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise FolderBusy(
            f"{what} {folder} is in use by another scoredyn process (PID {holder}, lock {path}); "
            "wait for it to finish, stop it, or use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return FolderLock(folder, fd)


@contextlib.contextmanager
def lock_folder(folder: PathLike, what: str = "folder") -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for the ``with`` block (see :func:`acquire_folder`)."""
    lock = acquire_folder(folder, what)
    try:
        yield lock
    finally:
        lock.release()
