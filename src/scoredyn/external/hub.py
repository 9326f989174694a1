"""diffusers models as denoisers: :func:`from_diffusers` (a UNet and its scheduler) and
:func:`load_diffusers` (a local ``save_pretrained`` folder). Needs ``pip install scoredyn[diffusers]``;
nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .vp import VPDenoiser

_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample", "original_sample": "sample"}


class MissingDependency(ImportError, ValueError):
    """An optional dependency is not installed (the message says which extra installs it)."""


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:
        raise MissingDependency(f"diffusers is not installed ({e}); install it with: pip install 'scoredyn[diffusers]'") from None
    return diffusers


def from_diffusers(unet: Any, scheduler: Any, *, timestep_map: str = "linear", quantize: bool = False) -> VPDenoiser:
    """A diffusers UNet (``unet(x, t).sample``) and its scheduler as a VE :class:`VPDenoiser`.

    The prediction type (``epsilon``, ``v_prediction``, ``sample``) and the noise table
    (``scheduler.alphas_cumprod``) are read from the scheduler; ``timestep_map="linear"`` is diffusers'
    own interpolation (``EulerDiscreteScheduler``), so scoredyn's samplers reproduce its schedulers.
    """
    config = getattr(scheduler, "config", None)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if config is None or abar is None:
        raise ValueError(
            f"{type(scheduler).__name__} has no alphas_cumprod table; expected a discrete VP scheduler "
            "(DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, ...)"
        )
    kind = config.get("prediction_type", "epsilon") if hasattr(config, "get") else getattr(config, "prediction_type", "epsilon")
    if kind not in _PREDICTIONS:
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported; expected one of {sorted(_PREDICTIONS)}")
    return VPDenoiser(unet, abar, prediction=_PREDICTIONS[kind], timestep_map=timestep_map, quantize=quantize)


def _class_of(config_file: Path, what: str) -> Any:
    try:
        name = json.loads(config_file.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the {what} class from {config_file}: {e}") from None
    cls = getattr(_diffusers(), str(name), None)
    if cls is None:
        raise ValueError(f"{config_file} names {what} class {name!r}, which this diffusers version does not have")
    return cls


def load_diffusers(
    path: Union[str, Path], *, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
    timestep_map: str = "linear", quantize: bool = False,
) -> VPDenoiser:
    """Load a local diffusers folder as a VE denoiser (no download).

    ``path`` is a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``, as
    ``DDPMPipeline.save_pretrained`` writes) or a folder holding a UNet's ``config.json`` and the
    scheduler's ``scheduler_config.json``. The model is moved to ``device`` / ``dtype`` and put in eval mode.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; expected a diffusers save_pretrained folder")
    if (root / "unet" / "config.json").is_file() and (root / "scheduler" / "scheduler_config.json").is_file():
        unet_dir, sched_file = root / "unet", root / "scheduler" / "scheduler_config.json"
    elif (root / "config.json").is_file() and (root / "scheduler_config.json").is_file():
        unet_dir, sched_file = root, root / "scheduler_config.json"
    else:
        raise ValueError(
            f"{root} is not a diffusers model folder; expected unet/config.json and scheduler/scheduler_config.json "
            "(a pipeline's save_pretrained) or config.json and scheduler_config.json side by side"
        )
    unet_cls = _class_of(unet_dir / "config.json", "model")
    sched_cls = _class_of(sched_file, "scheduler")
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": False}  # without accelerate installed diffusers warns otherwise
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    unet = unet_cls.from_pretrained(str(unet_dir), local_files_only=True, **kwargs)
    scheduler = sched_cls.from_config(sched_cls.load_config(str(sched_file.parent)))
    unet = (unet if device is None else unet.to(device)).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    return from_diffusers(unet, scheduler, timestep_map=timestep_map, quantize=quantize)
