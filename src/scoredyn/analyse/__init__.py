"""``scoredyn analyse``: one report on any model (a denoiser ``D(x, sigma)``).

>>> from scoredyn import analyse, data, train
>>> model = train.load("runs/digits")
>>> res = analyse.run(model, data.load("digits"), heldout=data.load("digits", split="test"), out="runs/analyse")

Sections, each a cached stage of a fixed amount of work (``AnalyseConfig``), skipped with a stated
reason when it cannot apply: 1 samples, 2 memorization (with the exact empirical denoiser as the
pure-memorization reference), 3 quality (FID / KID / precision-recall with the train-vs-held-out
floor), 4 structure of the score (Wang & Vastola), 5 teleportation, 6 likelihood, 7 fixed points
(optional). The report is ``out/report.md``, ``out/report.html`` (self-contained), ``out/results.json``
and ``out/figures/``, written by :mod:`scoredyn.studies.report`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .. import sample
from ..studies.report import Section, StudyReport, Table, versions, write_report
from ..studies.stages import Context, Stages
from . import fixed_points, likelihood, memorization, quality, samples, structure, teleport
from .config import SECTIONS, AnalyseConfig, preset, with_overrides
from ..train.cli import _DEFAULT_GRID
from .context import Analysis, sampler_fn, skipped
from .inputs import Range, describe, prepare

__all__ = ["AnalyseConfig", "SECTIONS", "preset", "run", "with_overrides"]

#: Levels of the default grid per sampler (``AnalyseConfig.steps=None``).
DEFAULT_STEPS = {"annealed_langevin": 40}


def run(
    denoiser: Any,
    train: Tensor,
    heldout: Optional[Tensor] = None,
    out: Union[str, Path] = "runs/analyse",
    config: Optional[AnalyseConfig] = None,
    *,
    data_range: Optional[Range] = None,
    device: Optional[Union[str, torch.device]] = None,
    name: Optional[str] = None,
    progress: bool = True,
    reuse: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Analyse ``denoiser`` against its training data ``train`` (and ``heldout`` data when given); write the
    report under ``out`` and return the results dictionary that ``results.json`` holds.

    ``data_range=(low, high)``: the range ``train`` / ``heldout`` are in, mapped linearly to the model's
    (data outside the model's range is refused). ``device``: where to compute (default: the model's
    parameters' device, else the CPU). Finished sections are cached under ``out/cache`` and reused
    when the model, the data and their settings are unchanged (``reuse=False`` recomputes).
    """
    cfg = config or AnalyseConfig()
    with_overrides(cfg)  # validates
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    dev = _device(denoiser, device)
    t0 = time.perf_counter()
    if not isinstance(train, Tensor):
        raise ValueError(f"train must be a tensor (N, *data_shape), got {type(train).__name__}")
    model = describe(denoiser, train, dev, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                     data_range=None, name=name)
    train_t = prepare(model, train, "training data", dev, data_range)
    held_t = prepare(model, heldout, "held-out data", dev, data_range)
    assert train_t is not None
    note = _training_set_note(model, train)
    sampler = cfg.sampler or model.sampler
    sampler_fn(sampler)  # a known name
    steps = cfg.steps or DEFAULT_STEPS.get(sampler, 18)
    grid = sample.sigma_grid(_DEFAULT_GRID.get(sampler, "karras"), steps, sigma_min=model.sigma_min,
                             sigma_max=model.sigma_max).to(torch.float32)
    out = Path(out)
    stages = Stages(out / "cache", log=log, reuse=reuse)
    ctx = Context(stages=stages, device=dev, seed=cfg.seed, out=out, progress=progress, log=log)
    a = Analysis(cfg, ctx, model, train_t, held_t, sampler, grid, notes=[note] if note else [])
    if note:
        log(f"[analyse] {note}")
    log(f"[analyse] {model.description}: data {tuple(train_t.shape)}"
        + (f", held-out {tuple(held_t.shape)}" if held_t is not None else ", no held-out data")
        + f"; {sampler}, {steps} levels, sigma in [{model.sigma_min:g}, {model.sigma_max:g}]; device {dev}")

    head: dict[str, Any] = {}
    sections: list[Section] = []
    s = samples.model_samples(a)
    sections.append(samples.section(a, s))
    emp = samples.empirical_samples(a)
    sec, h = memorization.section(a, s, emp, memorization.compute(a, s, emp))
    sections.append(sec)
    head.update(h)
    sec, h = quality.section(a, quality.compute(a, s, emp))
    sections.append(sec)
    head.update(h)
    sec, h = structure.section(a, structure.compute(a))
    sections.append(sec)
    head.update(h)
    sec, h = teleport.section(a, teleport.compute(a, s))
    sections.append(sec)
    head.update(h)
    if likelihood.available():
        try:
            lk = likelihood.compute(a)
        except (ValueError, RuntimeError, NotImplementedError) as e:  # e.g. a model without reverse-mode autograd
            log(f"[analyse] likelihood skipped: {e}")
            sections.append(skipped("6. Likelihood", f"the probability-flow likelihood could not be computed for this "
                                    f"model ({type(e).__name__}: {e})"))
        else:
            sec, h = likelihood.section(a, lk)
            sections.append(sec)
            head.update(h)
    else:
        sections.append(skipped("6. Likelihood", "this build has no probability-flow likelihood "
                                "(scoredyn.metrics.log_likelihood)"))
    if cfg.fixed_points:
        sec, h = fixed_points.section(a, fixed_points.compute(a, s))
        sections.append(sec)
        head.update(h)
    else:
        sections.append(skipped("7. Dynamics at the smallest sigma", "not asked for (--fixed-points / "
                                "AnalyseConfig(fixed_points=True))"))
    sections.insert(0, _findings(a, head))
    rep = StudyReport("analyse", f"Analysis of {model.description}", _papers(), _summary(a), sections, a.notes,
                      stages=list(stages.records), wall_s=time.perf_counter() - t0)
    conf = {**cfg.as_dict(), "model": model.description, "model_fingerprint": model.fingerprint,
            "sampler_used": sampler, "steps_used": steps, "sigma_min_used": model.sigma_min,
            "sigma_max_used": model.sigma_max, "data_range": model.data_range, "train_shape": list(train_t.shape),
            "heldout_shape": None if held_t is None else list(held_t.shape)}
    res = write_report(out, [rep], conf, versions(dev), title="scoredyn analyse report")
    log(f"[analyse] finished in {rep.wall_s:.1f} s; report: {out / 'report.html'}")
    return res


def _training_set_note(model: Any, train: Tensor) -> str:
    """Whether ``train`` is the data a scoredyn run records it was trained on (by its SHA-256); "" if unknown."""
    from ..train.fit import _fingerprint

    recorded = model.train_data.get("sha256") if isinstance(model.train_data, dict) else None
    if recorded is None:
        return ""
    if _fingerprint(train.detach().to("cpu", torch.float32)) == recorded:
        return "The training data given is the run's training set (its SHA-256 matches the one the run recorded)."
    return ("The training data given is NOT the set the run was trained on (its SHA-256 differs from the one the run "
            "recorded); memorization and the train-vs-held-out comparisons refer to the data given.")


def _device(denoiser: Any, device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; use cpu")
        return dev
    params = getattr(denoiser, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")


def _papers() -> str:
    return ("X. Gu et al., On Memorization in Diffusion Models (2023); B. Wang, J. J. Vastola, The Hidden Linear "
            "Structure in Score-Based Models and its Application, arXiv:2311.10892; Kim (2026), multiplicative noise "
            "conditioning as a dynamical system")


def _summary(a: Analysis) -> str:
    return (f"{a.model.description}, analysed on {a.train.shape[0]} training points"
            + (f" and {a.heldout.shape[0]} held-out points" if a.heldout is not None else " (no held-out data given)")
            + f" of shape {a.shape}.")


def _findings(a: Analysis, h: dict[str, Any]) -> Section:
    """The answers in one table: is it memorizing, how good, how Gaussian, where can it teleport."""
    rows = [
        ["Is it memorizing?", "copy fraction of samples (empirical denoiser: pure memorization)",
         f"{h['copy_fraction']:.3g} (empirical {h['copy_fraction_empirical']:.3g})"],
    ]
    if "nn_ratio_to_heldout" in h:
        rows.append(["", "median distance to the training set, samples / held-out data",
                     f"{h['nn_ratio_to_heldout']:.3g} (1: as far as fresh data; 0: copies)"])
    rows.append(["How good are the samples?", f"FID to {a.reference_name} data (floor: real vs real)",
                 f"{h['fid']:.4g} at {h['fid_points']} points (floor {h['fid_floor']:.4g} at {h['fid_floor_points']}; "
                 f"empirical denoiser {h['fid_empirical']:.4g})"])
    g = h["gaussian_explains_from_sigma"]
    rows.append(["How Gaussian is it?", f"smallest sigma from which the Gaussian explains >= "
                 f"{1 - a.cfg.gauss_threshold:.0%} of the score",
                 "nowhere in the tested range" if g == "none" else f"sigma >= {g:.4g}"])
    rows.append(["Where can it teleport?", "recommended sigma_skip (FID within "
                 f"{a.cfg.skip_tolerance:g} x the unskipped run)",
                 f"{h['recommended_sigma_skip']:.4g} (skips {h['recommended_fraction']:.0%} of the steps, "
                 f"{h['nfe_saved']} evaluations)"])
    if "likelihood_gap_bpd" in h:
        rows.append(["How likely is held-out data?", "bits/dim of held-out minus training points (0: no gap)",
                     f"{h['likelihood_gap_bpd']:.3g} ± {h['likelihood_gap_se']:.2g} (train {h['bpd_train']:.4g}, "
                     f"held-out {h['bpd_heldout']:.4g})"])
    if "fixed_points_converged" in h:
        n_conv = h["fixed_points_converged"]
        rows.append(["Where does sampling end?", "fixed points at sigma_min: fraction within 3 sigma_min of a "
                     "training point", f"{h['fixed_points_within_3_sigma_min']:.3g} of {n_conv} converged" if n_conv
                     else f"no fixed point found from {a.cfg.n_fixed_points} samples"])
    t = Table("findings", "Findings", ["question", "measure", "value"], rows)
    head = Table("headline", "Headline numbers (results.json holds them too)", ["quantity", "value"],
                 [[k, v] for k, v in h.items()])
    return Section("Findings", "", tables=[t, head])
