"""How much work ``scoredyn analyse`` does: a fixed amount per section (no wall-clock budget).

``default`` is sized for a GPU or a patient CPU; ``quick`` for minutes on a 2-core CPU on 8x8 digits.
Every stage hashes the part of the configuration it uses (plus the model's and the data's
fingerprints), so changing one field reruns only the sections that depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

SECTIONS = ("samples", "memorization", "quality", "structure", "teleport", "likelihood", "fixed_points")


@dataclass(frozen=True)
class AnalyseConfig:
    """Sizes of every section of the report. ``None`` means: take it from the model (sampler, steps, sigmas)."""

    mode: str = "default"
    seed: int = 0
    n_samples: int = 1000  # samples drawn from the model (and from the empirical reference)
    batch_size: int = 500  # samples per sampler call (results do not depend on it)
    sampler: Optional[str] = None  # a name in scoredyn.sample.SAMPLERS; None: the model's default
    steps: Optional[int] = None  # grid levels; None: 18 (40 for annealed_langevin)
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    n_reference: int = 1000  # training / held-out points in the quality floor and nearest-neighbour distributions
    fid_net: Optional[str] = None  # "digits", "mnist", "inception:PATH", "raw"; None: by data shape
    n_pairs: int = 8  # closest sample / training pairs shown
    # structure of the score (Wang & Vastola)
    uv_n: int = 256  # evaluation points per sigma (training and held-out each)
    uv_sigmas: int = 10  # noise levels, log-spaced over [sigma_min, sigma_max] of the model
    gmm_components: tuple[int, ...] = (2, 10, 50)
    gauss_threshold: float = 0.1  # "the Gaussian explains the score": unexplained variance <= this
    # teleportation
    skip_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    skip_tolerance: float = 1.05  # "no loss": FID within 5% of the unskipped run from the same seeds
    # likelihood
    likelihood_n: int = 128  # points each of training and held-out data
    likelihood_rtol: float = 1e-4  # tolerance of the adaptive probability-flow ODE solve (rtol = atol)
    hutchinson_probes: int = 1  # probes per evaluation when the trace is estimated
    exact_trace_max_dim: int = 64  # exact divergence up to this dimension, Hutchinson above
    # fixed points (optional)
    fixed_points: bool = False
    n_fixed_points: int = 16

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preset(mode: str = "default") -> AnalyseConfig:
    """``default``, ``quick`` (minutes on a CPU) or ``tiny`` (tests, seconds; numbers mean little)."""
    if mode == "default":
        return AnalyseConfig()
    if mode == "quick":
        return AnalyseConfig(mode="quick", n_samples=500, n_reference=500, uv_n=128, uv_sigmas=8,
                             gmm_components=(2, 10, 50), skip_fractions=(0.0, 0.1, 0.2, 0.3, 0.4),
                             likelihood_n=64, likelihood_rtol=1e-3,
                             # Hutchinson on 8x8 digits: an exact 64-d trace is 64 backward passes of the network
                             # per evaluation: unfinished after 4 minutes for a small UNet on a 2-core CPU, where
                             # Hutchinson took about 40 s
                             exact_trace_max_dim=16)
    if mode == "tiny":
        return AnalyseConfig(mode="tiny", n_samples=48, batch_size=32, n_reference=48, n_pairs=4, uv_n=16,
                             uv_sigmas=4, gmm_components=(2, 4), skip_fractions=(0.0, 0.25, 0.5),
                             likelihood_n=8, likelihood_rtol=1e-2, exact_trace_max_dim=8, n_fixed_points=4)
    raise ValueError(f"unknown analyse mode {mode!r}; expected 'default', 'quick' or 'tiny'")


def with_overrides(cfg: AnalyseConfig, **overrides: Any) -> AnalyseConfig:
    """``cfg`` with the given fields replaced (``None`` values are ignored); unknown names are an error."""
    known = {f.name for f in fields(AnalyseConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown analyse setting(s) {bad}; known: {sorted(known)}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    _check(cfg)
    return cfg


def _check(cfg: AnalyseConfig) -> None:
    for name in ("n_samples", "batch_size", "n_reference", "uv_n", "uv_sigmas", "likelihood_n",
                 "hutchinson_probes", "n_fixed_points", "n_pairs"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if cfg.n_samples < 4:
        raise ValueError(f"n_samples must be at least 4 (nearest neighbours and FID need several), got {cfg.n_samples}")
    if cfg.steps is not None and (isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 2):
        raise ValueError(f"steps must be an integer >= 2, got {cfg.steps!r}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {cfg.seed}")
    if any(not 0.0 <= f < 1.0 for f in cfg.skip_fractions) or 0.0 not in cfg.skip_fractions:
        raise ValueError(f"skip_fractions must lie in [0, 1) and include 0 (the unskipped run), got {cfg.skip_fractions}")
    if any(int(k) != k or k < 1 for k in cfg.gmm_components):
        raise ValueError(f"gmm_components must be positive integers, got {cfg.gmm_components}")
    for name in ("sigma_min", "sigma_max", "likelihood_rtol"):
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if cfg.sigma_min is not None and cfg.sigma_max is not None and not cfg.sigma_min < cfg.sigma_max:
        raise ValueError(f"sigma_min ({cfg.sigma_min}) must be below sigma_max ({cfg.sigma_max})")
