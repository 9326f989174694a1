"""The training configuration: one frozen, validated, JSON round-trippable :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .._checks import check_count, check_flag, check_positive, check_range, check_real
from .._result import Result
from .loss import check_weighting
from .sigma_dist import SIGMA_DISTS, SigmaDist

RESUME_FIELDS = ("sigma_dist", "sigma_min", "sigma_max", "levels", "p_mean", "p_std", "weighting", "batch_size", "lr",
                 "warmup", "grad_clip", "weight_decay", "betas", "ema_decay", "ema_warmup", "seed")
"""Fields a resumed run must share with the checkpoint (``steps``, logging and checkpoint cadence,
``bf16`` and ``compile`` may change)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Result):
    """Everything that defines a denoising-score-matching run of :func:`scoredyn.train.fit`.

    ``sigma_dist`` (``"loguniform"``, ``"lognormal"``, ``"geometric"``) draws training noise levels
    in ``[sigma_min, sigma_max]`` (``levels``: their number or the levels, for ``"geometric"``;
    ``p_mean``, ``p_std`` for ``"lognormal"``, Karras et al. 2022 §5). ``weighting`` ``None``: the
    conditioning's default. AdamW with ``lr`` (linear warm-up over ``warmup`` steps), ``betas``,
    ``weight_decay``; gradient norm clipped to ``grad_clip`` (0: off); EMA decay
    ``min(ema_decay, (1+t)/(10+t))`` with ``ema_warmup``. Checkpoints every ``ckpt_every`` steps
    (``keep`` kept), metrics every ``log_every``; bf16 autocast on CUDA with ``bf16``; ``compile``
    wraps the loss in ``torch.compile``. Validated once, at construction.
    """

    steps: int
    batch_size: int
    lr: float
    sigma_dist: str
    sigma_min: float
    sigma_max: float
    levels: Union[int, tuple[float, ...], None] = None
    weighting: Optional[str] = None
    p_mean: float = -1.2
    p_std: float = 1.2
    warmup: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    ckpt_every: int = 1000
    keep: int = 2
    log_every: int = 100
    bf16: bool = True
    compile: bool = False
    # (room for later options: a divergence check and a tempered-target objective)

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name, least in (("steps", 0), ("batch_size", 1), ("warmup", 0), ("seed", 0), ("ckpt_every", 1),
                            ("keep", 1), ("log_every", 1)):
            put(name, check_count(name, getattr(self, name), least=least))
        put("lr", check_positive("lr", self.lr))
        put("grad_clip", check_positive("grad_clip", self.grad_clip, allow_zero=True))
        put("weight_decay", check_positive("weight_decay", self.weight_decay, allow_zero=True))
        put("ema_decay", check_positive("ema_decay", self.ema_decay, allow_zero=True))
        if self.ema_decay >= 1.0:
            raise ValueError(f"ema_decay must be below 1 (0.999 is usual; 1 would never update the EMA), got {self.ema_decay}")
        if self.sigma_dist not in SIGMA_DISTS:
            raise ValueError(f"unknown sigma_dist {self.sigma_dist!r}; expected one of {', '.join(SIGMA_DISTS)}")
        lo, hi = check_range(self.sigma_min, self.sigma_max, allow_equal=True)
        put("sigma_min", lo)
        put("sigma_max", hi)
        put("p_mean", check_real("p_mean", self.p_mean))
        put("p_std", check_positive("p_std", self.p_std))
        if self.levels is not None and not isinstance(self.levels, int):
            put("levels", _floats("levels", self.levels, "an int (their number) or a sequence of noise levels"))
        SigmaDist(self.sigma_dist, sigma_min=lo, sigma_max=hi, levels=self.levels, p_mean=self.p_mean, p_std=self.p_std)
        if self.weighting is not None:
            put("weighting", check_weighting(self.weighting))
        betas = _floats("betas", self.betas, "two numbers in [0, 1)")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        put("betas", betas)
        for name in ("ema_warmup", "bf16", "compile"):
            check_flag(name, getattr(self, name))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated again; unknown fields refused by name)."""
        _known_fields(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`as_dict`; unknown and missing keys are refused by name."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a TrainConfig is read from a mapping of its fields, got {type(d).__name__}")
        _known_fields(d)
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"TrainConfig lacks the required field(s) {missing}")
        return cls(**dict(d))

    def differences(self, other: "TrainConfig", fields: Sequence[str] = RESUME_FIELDS) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for each of ``fields`` where the two differ."""
        if not isinstance(other, TrainConfig):
            raise ValueError(f"differences compares two TrainConfigs, got {type(other).__name__} (TrainConfig.from_dict reads a dict)")
        return {f: (getattr(self, f), getattr(other, f)) for f in fields if getattr(self, f) != getattr(other, f)}


def _known_fields(d: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(map(str, set(d) - names))
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown}; expected some of {sorted(names)}")


def _floats(name: str, values: Any, expected: str) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats (a string or a scalar is refused, naming ``expected``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be {expected}, got {name}={values!r}")
    return tuple(check_real(f"{name}[{i}]", v) for i, v in enumerate(values))
