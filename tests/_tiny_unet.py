"""A random tiny diffusers UNet2DModel and a linear-beta DDPMScheduler (no download), shared by the
external-model tests; ``diffusers`` is imported lazily so the tests can skip when it is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


def need_diffusers() -> Any:
    return pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'scoredyn[diffusers]')")


def tiny_unet(seed: int = 0, channels: int = 1, size: int = 8) -> Any:
    diffusers = need_diffusers()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(16, 16), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return unet.eval().requires_grad_(False)


def ddpm_scheduler(prediction: str = "epsilon") -> Any:
    diffusers = need_diffusers()
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction)


def save_tiny_model(path: Path, prediction: str = "epsilon", seed: int = 0, size: int = 8) -> Path:
    """Save a random tiny UNet and its scheduler as a pipeline folder (``unet/``, ``scheduler/``)."""
    tiny_unet(seed, size=size).save_pretrained(str(path / "unet"))
    ddpm_scheduler(prediction).save_pretrained(str(path / "scheduler"))
    return path


def readme_model(tmp_path: Path, monkeypatch: Any) -> None:
    """Set ``SCOREDYN_MODEL`` (a saved random tiny UNet) and ``SCOREDYN_TRAIN`` (20 random 1x8x8 images in
    [-1, 1]) for the README's "Bring your own model" block; skips without diffusers."""
    monkeypatch.setenv("SCOREDYN_MODEL", str(save_tiny_model(tmp_path / "ddpm")))
    torch.save(torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "train.pt")
    monkeypatch.setenv("SCOREDYN_TRAIN", str(tmp_path / "train.pt"))
