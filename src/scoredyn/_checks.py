"""Input validation shared by every module: one place that says what was wrong and what was expected."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

SigmaLike = Union[float, int, Tensor]
Seeds = Optional[Union[Sequence[int], Tensor]]
Denoiser = Callable[[Tensor, SigmaLike], Tensor]
"""A denoiser ``D(x, sigma) ~ E[x_0 | x_sigma = x]`` (DESIGN.md §2)."""


def check_finite(name: str, t: Tensor) -> Tensor:
    """Raise ``ValueError`` if ``t`` holds NaN or Inf; return ``t`` unchanged."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if (t.is_floating_point() or t.is_complex()) and t.numel():
        # max and min are NaN/Inf exactly when some element is: no temporaries the size of t
        flat = torch.view_as_real(t) if t.is_complex() else t
        if not bool(torch.isfinite(flat.amax()) & torch.isfinite(flat.amin())):
            n = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{name} contains {n} NaN/Inf value(s) out of {t.numel()}; expected finite values"
            )
    return t


def check_state(name: str, x: Tensor) -> Tensor:
    """A batch of states ``(B, *shape)``: floating point, at least 2-D, non-empty, finite."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, *data_shape), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 1 or x[0].numel() == 0:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (B, *data_shape) with B >= 1 and a non-empty data shape"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return check_finite(name, x)


def check_data(name: str, data: Tensor, min_points: int = 1) -> Tensor:
    """A training set ``(N, *shape)``: floating point, finite, at least ``min_points`` rows."""
    if not isinstance(data, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, *data_shape), got {type(data).__name__}")
    if data.dim() < 2:
        raise ValueError(f"{name} must have shape (N, *data_shape) with at least 2 dims, got shape {tuple(data.shape)}")
    if data.shape[0] < min_points:
        raise ValueError(f"{name} has {data.shape[0]} point(s); expected at least {min_points}")
    if data[0].numel() == 0:
        raise ValueError(f"{name} has empty points (shape {tuple(data.shape)}); expected a non-empty data shape")
    if not data.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {data.dtype}")
    return check_finite(name, data)


def on_host(t: Tensor) -> bool:
    """Whether value checks on ``t`` are free. Per-call checks (queries, sigma) skip tensors on an
    accelerator: reading a flag back would sync the device on every sampler step. Construction-time
    checks (training sets, parameters) always run; samplers check their outputs for NaN."""
    return t.device.type == "cpu"


def check_query(x: Tensor, data_shape: tuple[int, ...], name: str = "x") -> Tensor:
    """A batch of queries ``(B, *data_shape)`` matching the model's data shape, finite (on the host)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, {', '.join(map(str, data_shape))}), got {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(data_shape) or x.dim() != len(data_shape) + 1:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, data_shape))}) "
            f"to match the data shape {tuple(data_shape)}"
        )
    return check_finite(name, x) if on_host(x) else x


def as_sigma(sigma: SigmaLike, batch: int, like: Tensor, name: str = "sigma", allow_zero: bool = False) -> Tensor:
    """Turn a float, 0-d or ``(B,)`` sigma into a validated ``(B,)`` tensor on ``like``'s device and dtype."""
    if isinstance(sigma, Tensor):
        s = sigma.detach().to(device=like.device, dtype=like.dtype) if not sigma.requires_grad else sigma.to(like.device, like.dtype)
        if s.dim() == 0:
            s = s.expand(batch)
        elif s.dim() == 1 and s.shape[0] == batch:
            pass
        elif s.dim() == 1 and s.shape[0] == 1:
            s = s.expand(batch)
        else:
            raise ValueError(f"{name} has shape {tuple(sigma.shape)}; expected a float, a 0-d tensor or shape ({batch},)")
    else:
        try:
            val = float(sigma)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a float or a tensor, got {type(sigma).__name__}") from None
        if not math.isfinite(val):
            raise ValueError(f"{name} contains NaN/Inf; expected finite noise levels")
        if val < 0 or (val == 0 and not allow_zero):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got min {val:.3g}")
        return torch.full((batch,), val, device=like.device, dtype=like.dtype)
    if not on_host(s):
        return s
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} contains NaN/Inf; expected finite noise levels")
    if allow_zero:
        if bool((s < 0).any()):
            raise ValueError(f"{name} must be >= 0, got min {float(s.min()):.3g}")
    elif bool((s <= 0).any()):
        raise ValueError(f"{name} must be > 0, got min {float(s.min()):.3g}")
    return s


def check_real(name: str, value: object) -> float:
    """A finite real number, returned as ``float`` (a bool or a value ``float()`` cannot read is refused by name)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {name}={value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    return v


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """A finite positive scalar (or non-negative with ``allow_zero``)."""
    v = check_real(name, value)
    if (v < 0) if allow_zero else (v <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return v


def check_count(name: str, n: object, least: int = 1, none: Optional[str] = None) -> Any:
    """An integer ``>= least`` (a bool, a non-integral value or a smaller one is refused); with ``none``
    (what ``None`` means, e.g. "automatic") ``None`` is accepted and returned."""
    if n is None and none is not None:
        return None
    try:
        ok = not isinstance(n, bool) and int(n) == n and int(n) >= least  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        what = "a positive integer" if least == 1 else ("a non-negative integer" if least == 0 else f"an integer >= {least}")
        raise ValueError(f"{name} must be {what}{f' or None ({none})' if none else ''}, got {name}={n!r}")
    return int(n)  # type: ignore[call-overload]


def check_choice(name: str, value: Any, choices: Sequence[str], *, count_least: Optional[int] = None) -> Any:
    """One of ``choices``, or (with ``count_least``) an integer ``>= count_least`` returned as ``int``."""
    if isinstance(value, str) and value in choices:
        return value
    if count_least is not None and is_int(value) and int(value) >= count_least:
        return int(value)
    allowed = ", ".join(repr(c) for c in choices) + (f" or an int >= {count_least}" if count_least is not None else "")
    raise ValueError(f"{name} must be {allowed}, got {name}={value!r}")


def check_range(
    sigma_min: float, sigma_max: float, *, allow_equal: bool = False, allow_zero: bool = False,
    names: tuple[str, str] = ("sigma_min", "sigma_max"),
) -> tuple[float, float]:
    """A noise range ``0 < sigma_min < sigma_max`` (``<=`` with ``allow_equal``; ``sigma_min = 0`` with
    ``allow_zero``), each bound named as the caller passed it; returns ``(sigma_min, sigma_max)`` as floats."""
    lo = check_positive(names[0], sigma_min, allow_zero=allow_zero)
    hi = check_positive(names[1], sigma_max)
    if not (lo <= hi if allow_equal else lo < hi):
        raise ValueError(
            f"{names[0]} ({lo:.6g}) must {'not exceed' if allow_equal else 'be below'} {names[1]} ({hi:.6g}); "
            f"the noise range is given as {names[0]}=..., {names[1]}=..."
        )
    return lo, hi


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``x`` of shape ``(B, ...)``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def is_int(v: object) -> bool:
    """Whether ``v`` is an integer value (Python or NumPy), not a bool: the type test of JSON fields and seeds."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """Whether ``v`` is a real number (int or float), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_flag(name: str, value: object) -> bool:
    """A bool (``bool("no")`` is ``True``, so strings and numbers are refused, not converted)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {name}={value!r}")
    return value


def check_shape(name: str, shape: object) -> tuple[int, ...]:
    """A per-sample shape: a sequence of positive integers (``(2,)``, ``(1, 28, 28)``)."""
    try:
        dims = tuple(shape)  # type: ignore[call-overload]
    except TypeError:
        dims = None
    if dims is None or not all(is_int(d) and int(d) > 0 for d in dims):
        raise ValueError(f"{name} must be a sequence of positive integers such as (2,) or (1, 28, 28), got {name}={shape!r}")
    return tuple(int(d) for d in dims)


def check_seeds(seeds: Seeds, batch: int) -> Optional[tuple[int, ...]]:
    """``None``, or one integer seed per sample (a sequence or an integer tensor of length ``batch``)."""
    if seeds is None:
        return None
    if isinstance(seeds, Tensor):
        if seeds.dim() != 1 or seeds.is_floating_point() or seeds.is_complex():
            raise ValueError(f"seeds must be a 1-D integer tensor, got shape {tuple(seeds.shape)} dtype {seeds.dtype}")
        out = tuple(int(s) for s in seeds.tolist())
    else:
        try:
            items = list(seeds)
        except TypeError:
            raise ValueError(f"seeds must be a sequence of integers (one per sample), got {type(seeds).__name__}") from None
        for s in items:
            if not is_int(s):
                raise ValueError(f"seeds must be integers, got {s!r} of type {type(s).__name__}")
        out = tuple(int(s) for s in items)
    if len(out) != batch:
        raise ValueError(f"got {len(out)} seed(s) for a batch of {batch} sample(s); expected one seed per sample")
    return out


def check_device(device: Optional[Union[str, torch.device]]) -> Optional[torch.device]:
    """``None`` or a torch device that exists on this machine (a clear error instead of torch's assert)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({e}); expected e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here (torch {torch.__version__}, built for "
                             f"CUDA {torch.version.cuda}); use device='cpu' or a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
