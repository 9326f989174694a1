"""Cached study stages: a rerun reuses every stage whose configuration slice and version are unchanged.

A stage ``name`` stores its result under ``DIR/cache/``: tensors in ``<name>.safetensors``, numpy
arrays in ``<name>.npz`` and everything else in ``<name>.json``. The JSON file is written last and
holds the stage's key (a hash of its name, its ``version`` and the configuration slice it uses)
and the SHA-256 of each tensor / array file. It is removed before a stage writes its files, so a
stage killed between writing tensors and JSON leaves no completion marker and is recomputed; a file
whose checksum does not match the JSON (a torn write, a file replaced by hand) is recomputed with a
log note. A stage may keep artifacts (a training run) in ``DIR/cache/<name>/``; that folder is wiped
when the stage's key changes, so a killed run with the same key resumes and a changed configuration
never resumes a stale one.

Stage results are typed: ``fn`` returns a dataclass (fields: numbers, strings, lists, dicts,
tensors, numpy arrays, nested dataclasses or lists / dicts of them), and the cached copy is rebuilt
as the same dataclass. Nothing here depends on wall-clock time except the recorded seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write_bytes, atomic_write_text

#: Bump when the cache layout changes (every stage recomputes).
STAGE_FORMAT = 2

R = TypeVar("R")


def config_key(name: str, config: Mapping[str, Any], version: int = 0) -> str:
    """A stable hash of a stage's name, version and JSON-able configuration slice."""
    blob = json.dumps({"stage": name, "format": STAGE_FORMAT, "version": int(version), "config": _jsonable(config)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable({f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- typed results <-> (json, tensors, arrays)


def _encode(v: Any, path: str, tensors: dict[str, Tensor], arrays: dict[str, np.ndarray]) -> Any:
    """JSON for ``v``; tensors and arrays go to their own dicts under their dotted ``path``."""
    if isinstance(v, Tensor):
        tensors[path] = v.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(v, np.ndarray):
        arrays[path] = v
        return {"__array__": path}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _encode(getattr(v, f.name), f"{path}.{f.name}", tensors, arrays) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): _encode(x, f"{path}.{k}", tensors, arrays) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x, f"{path}.{i}", tensors, arrays) for i, x in enumerate(v)]
    return _jsonable(v)


def _decode(tp: Any, v: Any, tensors: Mapping[str, Tensor], arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild a value of annotated type ``tp`` from :func:`_encode`'s output."""
    if isinstance(v, dict) and "__tensor__" in v:
        return tensors[v["__tensor__"]]
    if isinstance(v, dict) and "__array__" in v:
        return arrays[v["__array__"]]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return None if v is None else _decode(inner[0] if len(inner) == 1 else Any, v, tensors, arrays)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _decode(hints[f.name], v[f.name], tensors, arrays) for f in dataclasses.fields(tp)
                     if f.name in v})
    if origin in (list, tuple) and isinstance(v, list):
        item = args[0] if args else Any
        out = [_decode(item, x, tensors, arrays) for x in v]
        return tuple(out) if origin is tuple else out
    if origin is dict and isinstance(v, dict):
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(item, x, tensors, arrays) for k, x in v.items()}
    if isinstance(v, dict):
        return {k: _decode(Any, x, tensors, arrays) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(Any, x, tensors, arrays) for x in v]
    if tp is float and v is None:
        return float("nan")
    return v


@dataclass
class StageRecord:
    """How one stage went: its key, seconds spent (or the original seconds when cached) and whether reused."""

    name: str
    key: str
    seconds: float
    cached: bool


class Stages:
    """Runs named stages, caching each typed result under ``root`` keyed by its configuration and version."""

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

    def artifacts(self, name: str, config: Mapping[str, Any], version: int = 0) -> Path:
        """The folder where stage ``name`` keeps its artifacts; wiped if it was made under another key."""
        key = config_key(name, config, version)
        folder = self.root / name
        marker = folder / ".key"
        if folder.exists() and (not marker.exists() or marker.read_text().strip() != key):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, key)
        return folder

    def load(self, name: str, config: Mapping[str, Any], result_type: type[R], version: int = 0) -> Optional[R]:
        """The cached result of ``name``, or ``None`` when absent, stale, unreadable or failing its checksum."""
        jpath, spath, npath = self._paths(name)
        if not jpath.exists():
            return None
        try:
            meta = json.loads(jpath.read_text())
        except (OSError, json.JSONDecodeError):
            self._log(f"  stage {name}: cache file {jpath.name} is unreadable; recomputing")
            return None
        if meta.get("key") != config_key(name, config, version):
            return None
        tensors: dict[str, Tensor] = {}
        arrays: dict[str, np.ndarray] = {}
        try:
            for path, want, kind in ((spath, meta.get("sha256_tensors"), "tensors"),
                                     (npath, meta.get("sha256_arrays"), "arrays")):
                if want is None:
                    continue
                blob = path.read_bytes()
                if _sha256(blob) != want:
                    self._log(f"  stage {name}: checksum mismatch in {path.name}; recomputing")
                    return None
                if kind == "tensors":
                    from safetensors.torch import load as st_load

                    tensors = st_load(blob)
                else:
                    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
            result = _decode(result_type, meta["result"], tensors, arrays)
        except Exception as e:  # a missing file, a bad archive, a changed result type: recompute
            self._log(f"  stage {name}: cached entry unusable ({type(e).__name__}: {e}); recomputing")
            return None
        self._seconds = float(meta.get("seconds", 0.0))
        return result

    def save(self, name: str, config: Mapping[str, Any], result: Any, seconds: float, version: int = 0) -> None:
        """Store ``result`` atomically: the JSON marker is removed first and written last, with checksums."""
        jpath, spath, npath = self._paths(name)
        jpath.unlink(missing_ok=True)
        tensors: dict[str, Tensor] = {}
        arrays: dict[str, np.ndarray] = {}
        plain = _encode(result, "r", tensors, arrays)
        meta: dict[str, Any] = {"stage": name, "key": config_key(name, config, version), "version": int(version),
                                "config": _jsonable(config), "seconds": seconds, "result": plain}
        if tensors:
            from safetensors.torch import save as st_save

            blob = st_save(tensors)
            atomic_write_bytes(spath, blob)
            meta["sha256_tensors"] = _sha256(blob)
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(npath, buf.getvalue())
            meta["sha256_arrays"] = _sha256(buf.getvalue())
        atomic_write_text(jpath, json.dumps(meta, indent=1, sort_keys=True, allow_nan=False))

    def run(self, name: str, config: Mapping[str, Any], fn: Callable[[], R], *, version: int,
            result_type: type[R]) -> R:
        """Stage ``name``'s result: from the cache when its key (config slice + version) is unchanged, else ``fn()``.

        The freshly computed result is returned as a cached rerun would see it (rebuilt from its
        stored form), so a first run and a warm rerun give identical values. Tensors come back on
        the CPU; the caller moves them to its device.
        """
        if not (isinstance(result_type, type) and dataclasses.is_dataclass(result_type)):
            raise ValueError(f"stage {name}: result_type must be a dataclass, got {result_type!r}")
        key = config_key(name, config, version)
        if self.reuse:
            cached = self.load(name, config, result_type, version)
            if cached is not None:
                self.records.append(StageRecord(name, key, self._seconds, True))
                self._log(f"  stage {name}: cached (took {self._seconds:.1f} s when computed)")
                return cached
        self._log(f"  stage {name}: running")
        t0 = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t0
        if not isinstance(result, result_type):
            raise TypeError(f"stage {name} returned {type(result).__name__}; expected {result_type.__name__}")
        self.save(name, config, result, secs, version)
        self.records.append(StageRecord(name, key, secs, False))
        self._log(f"  stage {name}: done in {secs:.1f} s")
        tensors: dict[str, Tensor] = {}
        arrays: dict[str, np.ndarray] = {}
        plain = json.loads(json.dumps(_encode(result, "r", tensors, arrays), sort_keys=True))  # as stored
        return _decode(result_type, plain, tensors, arrays)


@dataclass
class Context:
    """What every study needs: its cache, device, seed, progress flag and the registry of network gates."""

    stages: Stages
    device: torch.device
    seed: int
    out: Path
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    started: float = field(default_factory=time.perf_counter)
    networks: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since the study started (reported, never used to decide what runs)."""
        return time.perf_counter() - self.started

    def network(self, gate: Any) -> Any:
        """Register a trained network's gate result (listed under results.json's "networks")."""
        if gate.name in self.networks and self.networks[gate.name] != gate:
            raise ValueError(f"two different networks are named {gate.name!r}")
        self.networks[gate.name] = gate
        return gate
