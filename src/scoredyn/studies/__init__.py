"""Paper studies (DESIGN.md §1.6): ``scoredyn study {kim, smoothing, teleport, all}``.

Each study states its paper's claims as table rows, measures them, and gives a verdict
("supported", "not supported" or "inconclusive"); :func:`run_studies` writes report.md,
report.html, figures/*.png and results.json (every number, the configuration and versions).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import StudyConfig, preset, with_overrides
from .report import StudyReport, versions, write_report
from .stages import Context, Stages

STUDIES = ("kim", "smoothing", "teleport")

__all__ = ["STUDIES", "StudyConfig", "preset", "with_overrides", "run_studies"]


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    return dev


def run_studies(
    names: Sequence[str],
    cfg: StudyConfig,
    out: Path,
    *,
    progress: bool = True,
    reuse: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the named studies with ``cfg``, caching stages under ``out/cache``; write the report under ``out``.

    Returns the results dictionary that results.json holds.
    """
    bad = [n for n in names if n not in STUDIES]
    if bad or not names:
        raise ValueError(f"unknown study name(s) {bad or list(names)}; expected some of {STUDIES}")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    device = _device(cfg.device)
    stages = Stages(out / "cache", log=log, reuse=reuse)
    reports: list[StudyReport] = []
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        study_cfg = getattr(cfg, name)
        ctx = Context(stages=stages, device=device, seed=cfg.seed, out=out, progress=progress,
                      budget_s=study_cfg.budget_s, log=log)
        log(f"[study {name}] mode {cfg.mode}, device {device}, budget {study_cfg.budget_s:.0f} s")
        first = len(stages.records)
        rep: StudyReport = module.run(study_cfg, ctx)
        rep.stages = stages.records[first:]
        rep.wall_s = ctx.elapsed()
        log(f"[study {name}] finished in {rep.wall_s:.1f} s"
            + (f" (over its {study_cfg.budget_s:.0f} s budget)" if rep.wall_s > study_cfg.budget_s else ""))
        for r in rep.stages:
            log(f"    {r.name:<40s} {r.seconds:8.1f} s{'  (cached)' if r.cached else ''}")
        reports.append(rep)
    t0 = time.perf_counter()
    res = write_report(out, reports, cfg.as_dict(), versions(device))
    log(f"report written to {out / 'report.md'} and {out / 'report.html'} ({time.perf_counter() - t0:.1f} s)")
    return res
