"""What every section of an analysis shares: the model, the data, the sampler and its grid, the stage cache."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import sample
from ..studies.common import seeds
from ..studies.report import Section
from ..studies.stages import Context
from .config import AnalyseConfig
from .inputs import Model

#: Bump when a section's computation changes in a way its configuration does not show.
VERSION = 1

#: Random streams (``scoredyn.studies.common.seeds``): one per use, so no two draws share seeds.
STREAM_SAMPLES, STREAM_SUBSET, STREAM_UV, STREAM_LIKELIHOOD = 1, 2, 3, 4


@dataclass
class StageValues:
    """A section's cached result: named numbers, strings, lists and tensors."""

    values: dict[str, Any]


@dataclass
class Analysis:
    """One analysis run: configuration, model, data, sampler and stage cache."""

    cfg: AnalyseConfig
    ctx: Context
    model: Model
    train: Tensor
    heldout: Optional[Tensor]
    sampler: str
    grid: Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        return int(self.train[0].numel())

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and self.shape[0] in (1, 3)

    @property
    def reference(self) -> Tensor:
        """What samples are compared with: the held-out data, else the training data."""
        return self.heldout if self.heldout is not None else self.train

    @property
    def reference_name(self) -> str:
        return "held-out" if self.heldout is not None else "training"

    def base(self) -> dict[str, Any]:
        """The part of every stage's key that names the model, the data and the run."""
        from .inputs import fingerprint_tensor

        return {
            "v": VERSION, "model": self.model.fingerprint, "train": fingerprint_tensor(self.train),
            "heldout": None if self.heldout is None else fingerprint_tensor(self.heldout),
            "seed": self.ctx.seed, "device": self.ctx.device.type,
        }

    def sampling(self) -> dict[str, Any]:
        """The sampler part of a stage's key."""
        return {"sampler": self.sampler, "grid": [float(s) for s in self.grid]}

    def stage(self, name: str, config: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run (or reuse) stage ``analyse.<name>`` keyed by ``base() | config``; tensors come back on the device."""
        run, conf = self.ctx.stages.run, {**self.base(), **config}
        if "result_type" in inspect.signature(run).parameters:  # the typed stage cache (studies, issue 12)
            res = run(f"analyse.{name}", conf, lambda: StageValues(dict(work())), version=VERSION,
                      result_type=StageValues).values
        else:
            res = run(f"analyse.{name}", conf, work)
        return {k: v.to(self.ctx.device) if isinstance(v, Tensor) else v for k, v in res.items()}

    def subset(self, x: Tensor, n: int, stream: int) -> Tensor:
        """At most ``n`` rows of ``x``, a seeded random choice (the same for the same seed and data)."""
        if x.shape[0] <= n:
            return x
        gen = torch.Generator().manual_seed(seeds(self.ctx.seed, stream, 1)[0])
        idx = torch.randperm(x.shape[0], generator=gen)[:n].sort().values
        return x[idx.to(x.device)]

    def draw(self, denoiser: Any, n: int, grid: Optional[Tensor] = None, sampler: Any = None,
             desc: str = "sampling") -> tuple[Tensor, int]:
        """``n`` samples from seeded noise (stream ``STREAM_SAMPLES``; sample ``i`` depends on seed ``i`` alone)
        and the number of denoiser evaluations per sample."""
        grid = self.grid if grid is None else grid
        fn = sampler_fn(self.sampler) if sampler is None else sampler
        all_seeds = seeds(self.ctx.seed, STREAM_SAMPLES, n)
        out, nfe = [], 0
        bs = self.cfg.batch_size
        for start in range(0, n, bs):
            sd = all_seeds[start : start + bs]
            x = float(grid[0]) * sample.noise(sd, self.shape, self.ctx.device, torch.float32)
            counted = sample.CountNFE(denoiser)
            with torch.no_grad():
                out.append(fn(counted, x, grid.to(self.ctx.device), seeds=sd, progress=self.ctx.progress))
            nfe = counted.nfe
        if self.ctx.progress:
            self.ctx.log(f"    {desc}: {n} samples, {nfe} evaluations each")
        return torch.cat(out), nfe


def sampler_fn(name: str) -> Callable[..., Tensor]:
    """A sampler by name: ``scoredyn.sample.SAMPLERS`` (denoisers) or ``FIELD_SAMPLERS`` (score fields)."""
    registry = {**sample.SAMPLERS, **sample.FIELD_SAMPLERS}
    if name not in registry:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(sorted(registry))}")
    return registry[name]


def skipped(title: str, reason: str) -> Section:
    """A section that could not run, saying why."""
    return Section(title, f"Skipped: {reason}")
