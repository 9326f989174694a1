"""Paper studies (DESIGN.md §1.6): ``scoredyn study {kim, smoothing, teleport, all}``.

Each study declares its claims once as data (``studies/<name>.claims.toml``, read by :mod:`.claims`:
id, statement, source, kind, measured quantities and a criterion that decides and writes its own
text; thresholds in :mod:`.thresholds`),
measures them in cached, typed, checksummed stages (:mod:`.stages`), checks every trained network
with a quality gate (:mod:`.gate`), and gives each claim a verdict ("supported", "not supported"
or "inconclusive"). :func:`run_studies` writes report.md, report.html, figures/*.png, results.json
(every number, which depends on the configuration and seed alone, the networks and their gates,
the configuration and versions) and timings.json. docs/studies.md's claims tables are generated
from the declarations (:mod:`.docs`).

Adding a study: a claim table ``studies/<name>.claims.toml`` and a module ``studies/<name>.py`` with
``REGISTRY = load_registry("<name>")`` (:func:`.claims.load_registry`), a config dataclass in :mod:`.config` (with its named random
``streams``) and ``run(cfg, ctx) -> StudyReport``; every stage through
``ctx.stages.run(name, config_slice, fn, version=..., result_type=SomeDataclass)``; every trained
network through :func:`.gate.judge_network` and ``ctx.network(gate)``.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .._lock import lock_folder
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

    ``out`` is locked for the run (``scoredyn._lock``: a second process writing the same folder gets
    ``FolderBusy`` naming the holder). Returns the results dictionary that results.json holds.
    """
    bad = [n for n in names if n not in STUDIES]
    if bad or not names:
        raise ValueError(f"unknown study name(s) {bad or list(names)}; expected some of {STUDIES}")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    device = _device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "study folder"):
        return _run(names, cfg, out, device, progress=progress, reuse=reuse, log=log)


def _run(names: Sequence[str], cfg: StudyConfig, out: Path, device: torch.device, *, progress: bool, reuse: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    stages = Stages(out / "cache", log=log, reuse=reuse)
    reports: list[StudyReport] = []
    networks: dict = {}
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        study_cfg = getattr(cfg, name)
        ctx = Context(stages=stages, device=device, seed=cfg.seed, out=out, progress=progress, log=log,
                      networks=networks)
        log(f"[study {name}] mode {cfg.mode}, device {device}")
        first = len(stages.records)
        c0 = time.process_time()
        rep: StudyReport = module.run(study_cfg, ctx)
        rep.stages = stages.records[first:]
        rep.wall_s = ctx.elapsed()
        rep.cpu_s = time.process_time() - c0
        log(f"[study {name}] finished in {rep.wall_s:.1f} s wall, {rep.cpu_s:.1f} s CPU")
        for r in rep.stages:
            log(f"    {r.name:<40s} {r.seconds:8.1f} s{'  (cached)' if r.cached else ''}")
        reports.append(rep)
    t0 = time.perf_counter()
    res = write_report(out, reports, cfg.as_dict(), versions(device), list(networks.values()))
    log(f"report written to {out / 'report.md'} and {out / 'report.html'} ({time.perf_counter() - t0:.1f} s)")
    return res
