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

    out/.lock                        PID of the process training into ``out`` (``fcntl.flock``)
    out/previous-1/                  an earlier run moved aside by ``overwrite`` (never deleted)

A checkpoint is written into a temporary sibling directory ``.tmp-step-N-<pid>-<random>``, each
file flushed to disk, then the directory is renamed into place and ``latest`` is replaced
(temporary file + ``os.replace``): a kill at any moment leaves the previous checkpoint intact, and
a failed write (a full disk) removes its temporary directory. Nothing is unpickled: tensors come
from safetensors, everything else from JSON, and the network class must be in ``scoredyn.nets.NETS``.

Nothing is lost (:func:`prepare_run`, :func:`resume_point`): one process writes a run folder at a
time (:func:`lock_run`); a run resumes from its newest *valid* checkpoint even when ``latest`` is
missing or dangling; checkpoints that fail their checksums are renamed ``invalid-step-N``, not
deleted; starting over on a non-empty run needs ``overwrite`` and moves the old run to
``previous-<k>``; pruning to ``keep`` removes only checkpoints this process wrote; temporary
directories are removed only when the process named in them is dead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._checks import is_int, is_number
from .._io import atomic_write_text
from .._lock import FolderLock, acquire_folder, pid_alive
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


_WRITTEN: set[Path] = set()
"""Checkpoint directories this writer session (since its :func:`prepare_run`) wrote: the only ones
:func:`save_checkpoint` may prune."""


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
    metadata and file checksums added. Of the checkpoints this process wrote, the newest ``keep`` up
    to ``step`` are kept; checkpoints of other processes are never removed. A failed write (e.g. a
    full disk) removes its temporary directory and raises ``OSError`` naming the step and folder;
    the previous checkpoint stays the latest.
    """
    out = Path(out)
    root = out / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(root)
    remove_stale_temporaries(root)
    name = f"step-{int(step):09d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{os.getpid()}-", dir=root))
    try:
        _write_files(tmp, step, model, ema, optimizer, rng, config)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OSError(e.errno, f"cannot write checkpoint {name} in {root}: {why}; the previous checkpoint is "
                                   "intact (free space or fix the folder and rerun to resume)") from e
        raise
    final = root / name
    if final.exists() and final.resolve() not in _WRITTEN:  # another writer's: kept as replaced-step-N[-k]
        dest, k = root / f"replaced-{name}", 1
        while dest.exists():
            k += 1
            dest = root / f"replaced-{name}-{k}"
        os.replace(final, dest)
    if final.exists():  # rewriting our own step: move the old one aside first
        old = root / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _WRITTEN.add(final.resolve())
    atomic_write_text(out / "latest", f"ckpt/{name}\n")
    # keep the newest `keep` up to this step among those this process wrote
    ours = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name < name and p.resolve() in _WRITTEN)
    for old_ckpt in ours[: max(0, len(ours) + 1 - max(1, int(keep)))]:
        shutil.rmtree(old_ckpt, ignore_errors=True)
        _WRITTEN.discard(old_ckpt.resolve())
    return final


def _write_files(tmp: Path, step: int, model: Preconditioned, ema: nn.Module, optimizer: torch.optim.Optimizer,
                 rng: dict[str, Tensor], config: dict[str, Any]) -> None:
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


def _owner_pid(name: str) -> Optional[int]:
    """PID in a temporary name ``.tmp-[old-]step-N-<pid>[-<random>]`` (None when there is none)."""
    parts = name.split("-")
    try:
        return int(parts[parts.index("step") + 2])
    except (ValueError, IndexError):
        return None


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove the temporary directories under ``root`` whose writer is dead (a live one's are kept)."""
    removed = []
    for stray in sorted(Path(root).glob(".tmp-*")):
        pid = _owner_pid(stray.name)
        if pid is None or pid == os.getpid() or not pid_alive(pid):
            shutil.rmtree(stray, ignore_errors=True)
            removed.append(stray)
    return removed


def recover_interrupted(root: Path) -> None:
    """Undo a kill between the two renames that rewrite a step: when ``step-N`` is missing, its copy
    moved aside as ``.tmp-old-step-N-<pid>`` is the only one, so it is moved back."""
    for old in sorted(Path(root).glob(".tmp-old-step-*")):
        name = old.name[len(".tmp-old-"):].rsplit("-", 1)[0]
        if not (Path(root) / name).exists() and (old / "config.json").is_file():
            os.replace(old, Path(root) / name)


def lock_run(out: PathLike) -> FolderLock:
    """Take ``out``'s writer lock (creating the folder): a second writer gets ``FolderBusy`` with our PID."""
    return acquire_folder(out, "run folder")


RUN_MARKERS = ("ckpt", "latest", "metrics.jsonl")
"""What a run writes first: a folder with none of them is not a run (and is not written into)."""


def _run_entries(out: Path) -> list[Path]:
    """What is in ``out`` besides hidden files (the lock, a caller's markers) and earlier runs moved aside."""
    return sorted(p for p in out.iterdir() if not p.name.startswith(".") and not p.name.startswith("previous-"))


def prepare_run(out: PathLike, *, resume: bool = True, overwrite: bool = False) -> None:
    """Make ``out`` ready for a writer that holds its lock: finish or clean up after a killed writer,
    set checkpoints failing their checksums aside, and for ``resume=False`` move an existing run to
    ``out/previous-<k>`` (only with ``overwrite``; without it a non-empty run is refused)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"run folder {out} is an existing file; expected a folder (or a path that does not exist yet)")
    if not out.exists():
        return
    mine = (out / "ckpt").resolve()  # a new writer session: what earlier sessions wrote is not ours to prune
    _WRITTEN.difference_update({p for p in _WRITTEN if p.parent == mine})
    for tmp in out.glob(".latest.*"):  # an atomic write of `latest` cut short (we hold the lock)
        tmp.unlink(missing_ok=True)
    for tmp in out.glob(".metrics.jsonl.*"):
        tmp.unlink(missing_ok=True)
    root = out / "ckpt"
    if root.is_dir():
        recover_interrupted(root)
        remove_stale_temporaries(root)
    entries = _run_entries(out)
    if entries and not any(p.name in RUN_MARKERS for p in entries):
        found = ", ".join(p.name for p in entries[:6]) + (" ..." if len(entries) > 6 else "")
        raise ValueError(f"{out} is not empty and holds no scoredyn run ({found}); a run folder must be new, empty "
                         "or an earlier run: choose another folder")
    if not resume and entries:
        if not overwrite:
            found = ", ".join(p.name for p in entries[:6]) + (" ..." if len(entries) > 6 else "")
            raise ValueError(f"run folder {out} is not empty ({found}); starting over would replace that run: "
                             "pass overwrite (--overwrite) to move it aside to a previous-<k> subfolder, "
                             "resume it (omit --no-resume), or use another folder")
        k = 1
        while (out / f"previous-{k}").exists():
            k += 1
        dest = out / f"previous-{k}"
        dest.mkdir()
        for p in entries:
            os.replace(p, dest / p.name)
        warnings.warn(f"moved the earlier run in {out} to {dest}", UserWarning, stacklevel=2)
        return
    if root.is_dir():
        _set_aside_invalid(root)


def _checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why ``ckpt`` is not a loadable checkpoint (None when it is)."""
    try:
        read_config(ckpt)
    except (ValueError, OSError) as e:
        return str(e)
    return None


def _set_aside_invalid(root: Path) -> None:
    """Rename checkpoints newer than the newest valid one that fail their checks to ``invalid-step-N``
    (a later save of the same step must not replace them silently; nothing is deleted). When none
    is valid nothing is renamed: :func:`resume_point` then refuses, naming what it found."""
    bad = []
    for ck in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        problem = _checkpoint_problem(ck)
        if problem is None:
            break
        bad.append((ck, problem))
    else:
        return
    for ck, problem in bad:
        dest, k = root / f"invalid-{ck.name}", 1
        while dest.exists():
            k += 1
            dest = root / f"invalid-{ck.name}-{k}"
        os.replace(ck, dest)
        warnings.warn(f"{ck} is not a valid checkpoint ({problem}); renamed it {dest.name}", UserWarning, stacklevel=3)


def resume_point(out: PathLike) -> Optional[Path]:
    """The newest valid checkpoint of run folder ``out`` (None when it holds none).

    Works without ``latest`` (missing, dangling or pointing at an older step, e.g. after a kill
    between the rename of a checkpoint and the update of ``latest``): every ``ckpt/step-*`` is
    checked, newest first. Raises ``ValueError`` naming what was found when checkpoints exist but
    none is valid.
    """
    out = Path(out)
    root = out / "ckpt"
    if not root.is_dir():
        return None
    found = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    problems = []
    for ck in found:
        problem = _checkpoint_problem(ck)
        if problem is None:
            latest = out / "latest"
            pointed = latest.read_text().strip() if latest.is_file() else None
            if pointed != f"ckpt/{ck.name}":
                warnings.warn(f"{latest} {'is missing' if pointed is None else f'names {pointed!r}'}; resuming from "
                              f"the newest valid checkpoint {ck}", UserWarning, stacklevel=2)
            return ck
        problems.append(f"{ck.name}: {problem}")
    if found:
        raise ValueError(f"run folder {out} holds checkpoints but none is valid ({'; '.join(problems[:3])}); "
                         "move them away, or pass overwrite (--overwrite with --no-resume) to start over")
    return None


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
    found = sorted(f"ckpt/{c.name}" for c in (p / "ckpt").glob("step-*")) if (p / "ckpt").is_dir() else []
    if found:
        raise FileNotFoundError(f"{latest} is missing; checkpoints found: {', '.join(found)}: pass one of those "
                                "checkpoint directories (resuming the run with scoredyn train restores latest)")
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
    check_config_types(path, cfg)
    for fname in FILES:
        fpath = ckpt / fname
        if not fpath.is_file():
            raise FileNotFoundError(f"checkpoint file {fpath} is missing")
        if _sha256(fpath) != cfg["files"].get(fname):
            raise ValueError(f"checkpoint file {fpath} is corrupted or truncated (sha256 differs from config.json)")
    return cfg


def check_config_types(path: Path, cfg: dict[str, Any]) -> None:
    """The entries of a checkpoint config that code reads, with the types it expects (naming file and key)."""
    def need(key: str, value: Any, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key} is {value!r} ({type(value).__name__}); expected {expected}")

    need("step", cfg["step"], is_int(cfg["step"]) and cfg["step"] >= 0, "an integer >= 0")
    shape = cfg.get("data_shape")
    if shape is not None:
        need("data_shape", shape, isinstance(shape, list) and all(is_int(s) and s > 0 for s in shape),
             "a list of positive integers")
    model = cfg["model"]
    need("model", model, isinstance(model, dict), "an object with net, net_kwargs, conditioning")
    for key, ok, expected in (("net", isinstance(model.get("net"), str), "a network class name"),
                              ("net_kwargs", isinstance(model.get("net_kwargs"), dict), "an object"),
                              ("conditioning", isinstance(model.get("conditioning"), str), "a conditioning name")):
        need(f"model.{key}", model.get(key), ok, expected)
    if "sigma_data" in model:
        need("model.sigma_data", model["sigma_data"], is_number(model["sigma_data"]), "a number")
    for key, value in model["net_kwargs"].items():
        if key in ("dim", "hidden", "depth", "channels", "base", "num_blocks"):
            need(f"model.net_kwargs.{key}", value, is_int(value) and value > 0, "a positive integer")
    need("files", cfg["files"], isinstance(cfg["files"], dict), "an object of sha256 strings")
    opt = cfg["optimizer"]
    need("optimizer", opt, isinstance(opt, dict) and isinstance(opt.get("param_groups"), list),
         "an object with a param_groups list")
    train = cfg.get("train")
    if train is not None:
        need("train", train, isinstance(train, dict), "an object")
        sd = train.get("sigma_dist")
        if sd is not None:
            need("train.sigma_dist", sd, isinstance(sd, dict), "an object")
            for key in ("sigma_min", "sigma_max"):
                if key in sd:
                    need(f"train.sigma_dist.{key}", sd[key], is_number(sd[key]) and sd[key] > 0, "a positive number")


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
    """Generator states of a checkpoint (uint8 tensors), with the CPU states' lengths checked."""
    rng = _load_tensors(ckpt / "rng.safetensors")
    size = torch.get_rng_state().numel()
    for key in ("batch", "torch_cpu"):
        if key not in rng or rng[key].dtype != torch.uint8 or rng[key].numel() != size:
            got = "missing" if key not in rng else f"{rng[key].numel()} {rng[key].dtype} values"
            raise ValueError(f"{ckpt / 'rng.safetensors'}: generator state {key!r} is {got}; expected {size} uint8 "
                             "values (the checkpoint is truncated or from another torch build)")
    return rng


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, meta: dict[str, Any]) -> None:
    """Restore the optimiser state saved by :func:`save_checkpoint`."""
    state = optimizer_from_flat(_load_tensors(ckpt / "optim.safetensors"), meta)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"optimizer state in {ckpt} does not fit the model: {e}") from None


def rebuild(cfg: dict[str, Any], device: Union[str, torch.device] = "cpu") -> Preconditioned:
    """The (untrained) denoiser described by a checkpoint config."""
    try:
        model = build(cfg["model"]).to(device)
    except ValueError as e:
        raise ValueError(f"the model entry of the checkpoint config cannot be rebuilt: {e}") from None
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
