"""Helpers shared by the benchmark scripts in this folder.

The machine description, the shared-data location, median-of-repeats timing with device sync,
peak-memory measurement of a block of code, running a measurement in a fresh subprocess, and
replacing one ``## section`` of ``bench/RESULTS.md``. The scripts run as ``python bench/x.py``,
which puts this folder on ``sys.path``, and import it as ``from _common import ...``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, NamedTuple, Optional, Union

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
Device = Union[str, torch.device, None]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform``'s guess)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        return cpu


def load_average() -> Optional[float]:
    """The 1-minute load average, or ``None`` where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> str:
    """One line: CPU, cores, load, torch and its threads, OpenMP settings, Python, OS, GPU."""
    load = load_average()
    omp = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "MKL_NUM_THREADS")))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs"
        + ("" if load is None else f", load average {load:.1f}")
        + f", torch {torch.__version__} ({torch.get_num_threads()} thread(s); {omp or 'OMP_NUM_THREADS unset'})"
        + f", Python {platform.python_version()}, {platform.system()}, GPU {gpu}"
    )


def shared_data() -> Optional[Path]:
    """``../shared/data`` (or ``$SCOREDYN_SHARED_DATA``) when it holds ``mnist/``, else ``None``."""
    env = os.environ.get("SCOREDYN_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if (path / "mnist").is_dir() else None


def write_section(title: str, text: str, script: str) -> None:
    """Replace (or append) the ``## title`` section of ``bench/RESULTS.md`` atomically.

    ``script``: the producing script's path (its ``__file__``), named relative to the repository on the
    section's first line.
    """
    head = f"## {title}"
    old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    path = Path(script).resolve()
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else f"bench/{path.name}"
    body = f"{head}\n\nProduced by `{where}`.\n\n{text}\n"
    start = old.find(head + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + body
    else:
        nxt = old.find("\n## ", start + len(head))
        new = old[:start] + body + ("" if nxt < 0 else old[nxt:])
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, RESULTS)


def publish(title: str, text: str, script: str, write: bool) -> None:
    """Print a benchmark's report; with ``write``, also make it the ``## title`` section of ``bench/RESULTS.md``."""
    print(text)
    if write:
        write_section(title, text, script)


def sync(device: Device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timing(NamedTuple):
    """Median of the timed calls, every timed call, and the last call's output."""

    median: float
    times: list[float]
    out: Any


def timed(
    fn: Callable[[], Any], repeats: int, device: Device = None, warmup: bool = True, once_over: float = float("inf")
) -> Timing:
    """Median wall time of ``repeats`` calls of ``fn`` (device synced after each).

    ``warmup``: one untimed call first, unless it takes over ``once_over`` seconds: then that call
    is the only sample (for configurations too slow to repeat).
    """
    out = None
    if warmup:
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        first = time.perf_counter() - t0
        if first > once_over:
            return Timing(first, [first], out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, out)


def status_kib(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or ``None`` where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def max_rss_kib() -> int:
    """This process's peak RSS since it started, in KiB (``VmHWM``, else ``getrusage``)."""
    hwm = status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMemory:
    """Peak extra memory of the ``with`` block: ``.extra_mib`` and ``.how``.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at entry. CPU: growth of the
    resident-set high-water mark (``VmHWM`` reset at entry through ``/proc/self/clear_refs``; torch
    CPU allocations are invisible to tracemalloc), or, where it cannot be reset, of
    ``getrusage``'s ``ru_maxrss`` (a lower bound: an earlier, higher peak hides this one). Run it
    in a fresh process (:func:`run_child`) so that other measurements' peaks and cached allocator
    blocks do not leak in.
    """

    def __init__(self, device: Device = "cpu") -> None:
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.device = device
        self.extra_mib = float("nan")
        self.how = ""
        self._base = 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.how = "cuda.max_memory_allocated"
        elif reset_peak_rss() and status_kib("VmRSS") is not None:
            self._base = 1024 * status_kib("VmRSS")  # type: ignore[operator]
            self.how = "VmHWM"
        else:
            self._base = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.how = "ru_maxrss (lower bound)"
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.how == "VmHWM":
            peak = 1024 * status_kib("VmHWM")  # type: ignore[operator]
        else:
            peak = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.extra_mib = (peak - self._base) / 2**20


def run_child(argv: list[str], env: Optional[dict[str, str]] = None) -> dict:
    """Run ``python *argv`` in a fresh process and return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {argv} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
