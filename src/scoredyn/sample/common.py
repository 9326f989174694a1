"""Pieces shared by every sampler: grid and seed validation, the denoiser call, callback, progress
bar, a finite-value guard, the fixed-grid step loop (:meth:`Run.loop`) and :class:`CountNFE`.

Step arithmetic is done on Python floats (IEEE float64, as EDM keeps its time steps in float64);
the state ``x`` keeps its own dtype and device, and the denoiser sees ``sigma`` as a ``(B,)``
tensor in ``x``'s dtype. The grid is read to the host once per run, never inside the step loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import Denoiser, Seeds, check_seeds, check_state

Callback = Callable[[dict], Any]
GridLike = Union[Tensor, Sequence[float]]
Step = Callable[[int, Tensor, Tensor, float, float], Tensor]
"""``step(i, x, D, sigma, sigma_next) -> x_next``: one step of :meth:`Run.loop` given ``D = D(x, sigma)``."""


class SamplerDivergence(ValueError, FloatingPointError):
    """A sampler produced NaN/Inf; the message names the step index and the sigmas of that step."""


def grid_values(sigmas: GridLike, name: str = "sigmas", min_len: int = 2, direction: str = "descending") -> list[float]:
    """Validate a sampler grid and return it as float64 Python floats.

    The grid must be 1-D, finite, non-negative, strictly descending, with at least ``min_len``
    values; a 0 may only appear last (it means "denoise fully", DESIGN.md §2). ``direction="ascending"``
    asks for a strictly ascending grid of positive levels instead (inversion, :func:`~scoredyn.sample.invert`);
    ``"either"`` accepts both.
    """
    if direction not in ("descending", "ascending", "either"):
        raise ValueError(f"direction must be 'descending', 'ascending' or 'either', got {direction!r}")
    if isinstance(sigmas, Tensor):
        if sigmas.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of noise levels, got shape {tuple(sigmas.shape)}")
        vals = [float(v) for v in sigmas.detach().to("cpu", torch.float64).tolist()]
    else:
        try:
            vals = [float(v) for v in sigmas]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a 1-D tensor or sequence of floats, got {type(sigmas).__name__}") from None
    if len(vals) < min_len:
        raise ValueError(f"{name} has {len(vals)} value(s); expected a descending grid of at least {min_len}")
    bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} contains NaN/Inf at index {bad[0]}; expected finite noise levels")
    neg = [i for i, v in enumerate(vals) if v < 0]
    if neg:
        raise ValueError(f"{name}[{neg[0]}] = {vals[neg[0]]:.6g} is negative; expected noise levels >= 0")
    up = direction == "ascending" or (direction == "either" and vals[1] > vals[0])
    for i in range(len(vals) - 1):
        if up and not vals[i + 1] > vals[i]:
            what = "strictly descending (sampling) or strictly ascending (inversion)" if direction == "either" else "strictly ascending"
            raise ValueError(f"{name} must be {what}; {name}[{i}] = {vals[i]:.6g} >= {name}[{i + 1}] = {vals[i + 1]:.6g}")
        if not up and not vals[i + 1] < vals[i]:
            hint = " (only the deterministic samplers invert: sample.invert)" if vals[i + 1] > vals[i] else ""
            raise ValueError(
                f"{name} must be strictly descending{hint}; {name}[{i}] = {vals[i]:.6g} <= {name}[{i + 1}] = {vals[i + 1]:.6g}"
            )
    if up and vals[0] == 0:
        raise ValueError(f"an ascending {name} must start above 0 (the probability-flow ODE is singular at sigma = 0)")
    return vals


class CountNFE:
    """Wrap a denoiser and count its evaluations in ``.nfe`` (one batched call counts once).

    Attributes of the wrapped model are forwarded; ``score``, ``field``, ``forward`` and ``denoise``
    are counted as evaluations too.
    """

    _COUNTED = ("score", "field", "forward", "denoise")

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: Tensor, sigma: Any) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma)

    def __getattr__(self, name: str) -> Any:
        if name in ("denoiser", "nfe"):  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        attr = getattr(self.denoiser, name)
        if name in CountNFE._COUNTED and callable(attr):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.nfe += 1
                return attr(*args, **kwargs)

            return counted
        return attr

    def __repr__(self) -> str:
        return f"CountNFE({self.denoiser!r}, nfe={self.nfe})"


class Run:
    """State shared by one sampler call: the validated grid and seeds, the denoiser call with a
    ``(B,)`` sigma tensor, per-sample noise, the callback, the progress bar and the finite guard.

    On CPU a non-finite state raises at once; on other devices the first bad step is tracked on
    the device and reported by :meth:`finish` (no host sync inside the loop).
    """

    def __init__(
        self,
        name: str,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: GridLike,
        seeds: Seeds = None,
        callback: Optional[Callback] = None,
        progress: bool = False,
        invertible: bool = False,
    ) -> None:
        if not callable(denoiser):
            raise ValueError(f"{name}: denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
        if callback is not None and not callable(callback):
            raise ValueError(f"{name}: callback must be callable or None, got {type(callback).__name__}")
        self.name = name
        self.denoiser = denoiser
        check_state("x", x)
        self.sigmas = grid_values(sigmas, direction="either" if invertible else "descending")
        self.ascending = self.sigmas[1] > self.sigmas[0]
        """An ascending grid (inversion: data -> noise; only samplers built with ``invertible=True``)."""
        self.seeds = check_seeds(seeds, x.shape[0])
        self.callback = callback
        self.progress = bool(progress)
        self._eager = x.device.type == "cpu"
        self._first_bad: Optional[Tensor] = None
        self._steps: list[tuple[int, float, float]] = []
        self._noise: Any = None

    @property
    def n_steps(self) -> int:
        return len(self.sigmas) - 1

    def steps(self, total: Optional[int] = None) -> Iterator[int]:
        """``range(total)`` (default: the number of grid steps), wrapped in tqdm when ``progress``."""
        return iter(progress_range(self.n_steps if total is None else total, self.progress, self.name))

    def sigma(self, x: Tensor, s: float) -> Tensor:
        """``s`` as the ``(B,)`` tensor handed to the denoiser."""
        return torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)

    def denoise(self, x: Tensor, s: float) -> Tensor:
        """``D(x, s)``."""
        return self.denoiser(x, self.sigma(x, s))

    def noise(self, x: Tensor, step: int) -> Tensor:
        """Standard normal draws like ``x`` for sampler step ``step``: per-sample seeded when seeds were
        given (``noise(seeds, ..., step=step + 1)``: step 0 is left to the initial state), else global RNG."""
        if self.seeds is None:
            return torch.randn_like(x)
        if self._noise is None:
            from .noise import NoiseStream

            self._noise = NoiseStream(self.seeds, x.shape[1:], x.device, x.dtype)
        return self._noise(step + 1)

    def loop(self, x: Tensor, step: Step, churn: Optional[Callable[[Run, Tensor, int], tuple[Tensor, float]]] = None) -> Tensor:
        """The fixed-grid loop of the one-call-per-step samplers: at step ``i`` (``churn`` first raising
        ``sigma_i`` to ``s_hat``, Karras et al. 2022 Alg. 2), ``D = D(x, sigma_i)``, the callback, then
        ``x = step(i, x, D, sigma_i, sigma_{i+1})`` and the finite guard; returns :meth:`finish`."""
        sig = self.sigmas
        for i in self.steps():
            s, s_next = sig[i], sig[i + 1]
            extra: dict[str, float] = {}
            if churn is not None:
                x, s = churn(self, x, i)
                extra = dict(sigma_hat=s)
            d = self.denoise(x, s)
            self.emit(i, x, d, **extra)
            x = step(i, x, d, s, s_next)
            self.guard(i, x, s, s_next)
        return self.finish(x)

    def emit(self, i: int, x: Tensor, denoised: Optional[Tensor], **extra: Any) -> None:
        """Call the callback with ``i, sigma, sigma_next, x, denoised`` (and ``extra``)."""
        if self.callback is not None:
            k = min(i, self.n_steps - 1)
            info = dict(i=i, sigma=self.sigmas[k], sigma_next=self.sigmas[k + 1], x=x, denoised=denoised)
            info.update(extra)
            self.callback(info)

    def guard(self, i: int, x: Tensor, s_from: float, s_to: float) -> None:
        """Check the state after step ``i`` (``s_from -> s_to``) is finite."""
        if self._eager:
            # A sum is non-finite if any term is (or if it overflows, hence the confirmation); it is
            # vectorised and ~50x cheaper on CPU than isfinite(x).all().
            total = x.sum(dtype=torch.float32) if x.element_size() < 4 else x.sum()
            if not math.isfinite(float(total)) and not bool(torch.isfinite(x).all()):
                raise self._error(i, s_from, s_to)
            return
        ok = torch.isfinite(x).all()
        cur = torch.where(ok, -1, len(self._steps))
        self._steps.append((i, s_from, s_to))
        self._first_bad = cur if self._first_bad is None else torch.where(self._first_bad >= 0, self._first_bad, cur)

    def finish(self, x: Tensor) -> Tensor:
        """Raise for a non-finite step tracked on the device; return ``x``."""
        if self._first_bad is not None:
            k = int(self._first_bad)
            if k >= 0:
                raise self._error(*self._steps[k])
        return x

    def _error(self, i: int, s_from: float, s_to: float) -> SamplerDivergence:
        return SamplerDivergence(
            f"{self.name}: non-finite values (NaN/Inf) at step {i} (sigma {s_from:.6g} -> {s_to:.6g}); "
            f"the denoiser or the step size is unstable there"
        )


def progress_range(n: int, progress: bool, desc: str) -> Iterable[int]:
    """``range(n)``, wrapped in a tqdm bar when ``progress``."""
    if progress:
        from tqdm.auto import tqdm

        return tqdm(range(n), desc=desc, leave=False)
    return range(n)
