"""Checkpoints that load safely and are never half-written.

Layout of a run directory ``out``::

    out/latest                       text: "ckpt/step-000001000" (replaced atomically)
    out/ckpt/step-000001000/
        model.safetensors            training weights
        ema.safetensors              EMA weights (what :func:`load` returns)
        optim.safetensors            optimiser tensors, keys "state.<param>.<name>"
        rng.safetensors              generator states as uint8 tensors
        config.json                  format/version, model spec (network class from an allow-list +
                                     kwargs), data shape, training arguments, step, optimiser
                                     scalars and param groups, sha256 of every file above

A checkpoint is written into a temporary sibling directory, each file flushed to disk, then the
directory is renamed into place and ``latest`` is replaced (temporary file + ``os.replace``): a
kill at any moment leaves the previous checkpoint intact. Nothing is unpickled: tensors come from
safetensors, everything else from JSON, and the network class must be in ``scoredyn.nets.NETS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._io import atomic_write_text
from ..nets.precondition import Preconditioned, build

FORMAT = "scoredyn.train.checkpoint"
VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "optim.safetensors", "rng.safetensors")
PathLike = Union[str, "os.PathLike[str]"]


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-serialisable rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"state.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out: PathLike,
    step: int,
    *,
    model: Preconditioned,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, Tensor],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically under ``out/ckpt`` and point ``out/latest`` at it.

    ``config`` (JSON-serialisable) is stored with the format version, model spec, step, optimiser
    metadata and file checksums added. The newest ``keep`` checkpoints up to ``step`` are kept (those of
    later steps, left by a run this one started over from, are removed).
    """
    out = Path(out)
    root = out / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(root)
    for stray in root.glob(".tmp-*"):  # left by a process killed while writing
        shutil.rmtree(stray, ignore_errors=True)
    name = f"step-{int(step):09d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    _save_tensors(model.state_dict(), tmp / "model.safetensors")
    _save_tensors(ema.state_dict(), tmp / "ema.safetensors")
    opt_tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
    _save_tensors(opt_tensors, tmp / "optim.safetensors")
    _save_tensors({k: v.to(torch.uint8) for k, v in rng.items()}, tmp / "rng.safetensors")
    full = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        **config,
        "model": model.spec(),
        "optimizer": opt_meta,
        "files": {f: _sha256(tmp / f) for f in FILES},
    }
    _fsync_write(tmp / "config.json", json.dumps(full, indent=1, sort_keys=True).encode())
    final = root / name
    if final.exists():  # rewriting the same step: move the old one aside first
        old = root / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(out / "latest", f"ckpt/{name}\n")
    # keep the newest `keep` up to this step; later ones belong to a run this one started over from
    ckpts = sorted(p for p in root.glob("step-*") if p.is_dir())
    stale = [p for p in ckpts if p.name > name]
    older = [p for p in ckpts if p.name < name]
    for old_ckpt in stale + older[: max(0, len(older) + 1 - max(1, int(keep)))]:
        shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def recover_interrupted(root: Path) -> None:
    """Undo a kill between the two renames that rewrite a step: when ``step-N`` is missing, its copy
    moved aside as ``.tmp-old-step-N-<pid>`` is the only one, so it is moved back."""
    for old in sorted(Path(root).glob(".tmp-old-step-*")):
        name = old.name[len(".tmp-old-"):].rsplit("-", 1)[0]
        if not (Path(root) / name).exists() and (old / "config.json").is_file():
            os.replace(old, Path(root) / name)


def find_checkpoint(path: PathLike) -> Path:
    """The checkpoint directory for ``path``: a run directory (via ``latest``) or a checkpoint directory."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    latest = p / "latest"
    if latest.is_file():
        if (p / "ckpt").is_dir():
            recover_interrupted(p / "ckpt")
        target = p / latest.read_text().strip()
        if not (target / "config.json").is_file():
            raise FileNotFoundError(f"{latest} points to {target}, which holds no checkpoint (config.json missing)")
        return target
    raise FileNotFoundError(
        f"no checkpoint at {p}: expected a run directory with a 'latest' file or a checkpoint directory with config.json"
    )


def has_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` holds a checkpoint :func:`find_checkpoint` can locate."""
    try:
        find_checkpoint(path)
    except FileNotFoundError:
        return False
    return True


def read_config(ckpt: PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, after checking its format, version and checksums."""
    ckpt = Path(ckpt)
    path = ckpt / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a scoredyn checkpoint directory")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is corrupted") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scoredyn checkpoint config (format {cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FORMAT!r})")
    if cfg.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint format version {cfg.get('version')!r}; this scoredyn reads version {VERSION}")
    for key in ("model", "files", "step", "optimizer"):
        if key not in cfg:
            raise ValueError(f"{path} lacks the {key!r} entry; the checkpoint is incomplete")
    for fname in FILES:
        fpath = ckpt / fname
        if not fpath.is_file():
            raise FileNotFoundError(f"checkpoint file {fpath} is missing")
        if _sha256(fpath) != cfg["files"].get(fname):
            raise ValueError(f"checkpoint file {fpath} is corrupted or truncated (sha256 differs from config.json)")
    return cfg


def _load_tensors(path: Path, device: Union[str, torch.device] = "cpu") -> dict[str, Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"cannot read {path} as safetensors ({e}); the checkpoint is corrupted") from None


def load_weights(module: nn.Module, path: Path, device: Union[str, torch.device] = "cpu") -> None:
    """Load a safetensors state dict into ``module``, requiring exactly matching keys and shapes."""
    tensors = _load_tensors(path, device)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not fit the network rebuilt from config.json: {e}") from None


def load_rng(ckpt: Path) -> dict[str, Tensor]:
    """Generator states of a checkpoint (uint8 tensors)."""
    return _load_tensors(ckpt / "rng.safetensors")


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, meta: dict[str, Any]) -> None:
    """Restore the optimiser state saved by :func:`save_checkpoint`."""
    state = optimizer_from_flat(_load_tensors(ckpt / "optim.safetensors"), meta)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"optimizer state in {ckpt} does not fit the model: {e}") from None


def rebuild(cfg: dict[str, Any], device: Union[str, torch.device] = "cpu") -> Preconditioned:
    """The (untrained) denoiser described by a checkpoint config."""
    model = build(cfg["model"]).to(device)
    shape = cfg.get("data_shape")
    if shape is not None:
        model.data_shape = tuple(int(s) for s in shape)
    return model


def load(path: PathLike, device: Union[str, torch.device] = "cpu", which: str = "ema") -> Preconditioned:
    """The trained denoiser of a run or checkpoint directory (``which="ema"`` or ``"model"``), in eval mode.

    Rebuilt from ``config.json`` (network class from an allow-list) and safetensors; nothing is
    unpickled. Raises ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` for a corrupted
    one, another format version or an unknown network class.
    """
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    ckpt = find_checkpoint(path)
    cfg = read_config(ckpt)
    model = rebuild(cfg, device)
    load_weights(model, ckpt / f"{which}.safetensors", device)
    model.checkpoint_config = cfg  # type: ignore[assignment]
    return model.eval().requires_grad_(False)
