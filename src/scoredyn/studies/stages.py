"""Cached, timed study stages: a rerun reuses every stage whose configuration has not changed.

Each stage ``name`` stores its result under ``DIR/cache/``: tensors in ``<name>.safetensors``, numpy
arrays in ``<name>.npz`` and everything else in ``<name>.json``, which is written last and carries
the hash of the stage's configuration (the completion marker). A stage may also keep artifacts (a
training run) in ``DIR/cache/<name>/``; that folder is wiped when the stage's key changes, so a
killed run with the same key resumes and a changed configuration never resumes a stale one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write_bytes, atomic_write_text

#: Bump when a stage's computation changes in a way its configuration does not show.
STAGE_FORMAT = 1


def config_key(name: str, config: Mapping[str, Any]) -> str:
    """A stable hash of a stage's name and JSON-able configuration."""
    blob = json.dumps({"stage": name, "format": STAGE_FORMAT, "config": _jsonable(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    raise ValueError(f"stage configuration value {v!r} of type {type(v).__name__} is not JSON-able")


@dataclass
class StageRecord:
    """How one stage went: its key, seconds spent (or the original seconds when cached) and whether reused."""

    name: str
    key: str
    seconds: float
    cached: bool


def _split(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, np.ndarray]]:
    plain: dict[str, Any] = {}
    tensors: dict[str, Tensor] = {}
    arrays: dict[str, np.ndarray] = {}
    for k, v in result.items():
        if isinstance(v, Tensor):
            tensors[k] = v.detach().to("cpu").contiguous()
        elif isinstance(v, np.ndarray):
            arrays[k] = v
        else:
            plain[k] = _jsonable(v)
    return plain, tensors, arrays


class Stages:
    """Runs named stages, caching each result under ``root`` keyed by a hash of its configuration."""

    def __init__(self, root: Path, *, log: Callable[[str], None] | None = None, reuse: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.reuse = reuse
        self.records: list[StageRecord] = []
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"stage name {name!r} must be a plain file name (no slashes, not starting with '.')")
        return self.root / f"{name}.json", self.root / f"{name}.safetensors", self.root / f"{name}.npz"

    def artifacts(self, name: str, config: Mapping[str, Any]) -> Path:
        """The folder where stage ``name`` keeps its artifacts; wiped if it was made under another key."""
        key = config_key(name, config)
        folder = self.root / name
        marker = folder / ".key"
        if folder.exists() and (not marker.exists() or marker.read_text().strip() != key):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, key)
        return folder

    def load(self, name: str, config: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The cached result of ``name`` under ``config``, or ``None`` when absent, stale or unreadable."""
        jpath, spath, npath = self._paths(name)
        if not jpath.exists():
            return None
        try:
            meta = json.loads(jpath.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if meta.get("key") != config_key(name, config):
            return None
        out: dict[str, Any] = dict(meta["result"])
        try:
            if meta.get("tensors"):
                from safetensors.torch import load_file

                loaded = load_file(str(spath))
                if set(loaded) != set(meta["tensors"]):
                    return None
                out.update(loaded)
            if meta.get("arrays"):
                with np.load(npath, allow_pickle=False) as z:
                    if set(z.files) != set(meta["arrays"]):
                        return None
                    out.update({k: z[k] for k in z.files})
        except Exception:  # an unreadable cache entry (SafetensorError, BadZipFile, ...) means: recompute
            return None
        out["_seconds"] = float(meta.get("seconds", 0.0))
        return out

    def save(self, name: str, config: Mapping[str, Any], result: Mapping[str, Any], seconds: float) -> None:
        """Store ``result`` (JSON-able values, tensors, numpy arrays) atomically; the JSON file goes last."""
        jpath, spath, npath = self._paths(name)
        plain, tensors, arrays = _split(result)
        if tensors:
            from safetensors.torch import save

            atomic_write_bytes(spath, save(tensors))
        if arrays:
            import io

            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(npath, buf.getvalue())
        meta = {
            "stage": name,
            "key": config_key(name, config),
            "config": _jsonable(config),
            "seconds": seconds,
            "tensors": sorted(tensors),
            "arrays": sorted(arrays),
            "result": plain,
        }
        atomic_write_text(jpath, json.dumps(meta, indent=1, sort_keys=True, allow_nan=False))

    def run(self, name: str, config: Mapping[str, Any], fn: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """Return stage ``name``'s result: from the cache when its configuration is unchanged, else ``fn()``.

        Tensors come back on the CPU; the caller moves them to its device.
        """
        key = config_key(name, config)
        if self.reuse:
            cached = self.load(name, config)
            if cached is not None:
                secs = cached.pop("_seconds")
                self.records.append(StageRecord(name, key, secs, True))
                self._log(f"  stage {name}: cached (took {secs:.1f} s when computed)")
                return cached
        self._log(f"  stage {name}: running")
        t0 = time.perf_counter()
        result = dict(fn())
        secs = time.perf_counter() - t0
        self.save(name, config, result, secs)
        self.records.append(StageRecord(name, key, secs, False))
        self._log(f"  stage {name}: done in {secs:.1f} s")
        plain, tensors, arrays = _split(result)
        # The same types as a cached rerun gets back (tuples become lists, and so on).
        return {**json.loads(json.dumps(plain)), **tensors, **arrays}


@dataclass
class Context:
    """What every study needs: its cache, device, seed, progress flag and time budget."""

    stages: Stages
    device: torch.device
    seed: int
    out: Path
    progress: bool = True
    budget_s: float = float("inf")
    started: float = field(default_factory=time.perf_counter)
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    def elapsed(self) -> float:
        """Seconds since the study started."""
        return time.perf_counter() - self.started

    def time_left(self) -> float:
        """Seconds left in the study's budget (negative when over)."""
        return self.budget_s - self.elapsed()
