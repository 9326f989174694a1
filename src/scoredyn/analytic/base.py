"""Common base of the analytical denoisers (DESIGN.md §2: the score is ``(D(x, sigma) - x) / sigma^2``)."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .._checks import SigmaLike, as_sigma, bcast, check_device, check_query
from ._stream import TrainingSet


class AnalyticDenoiser(nn.Module):
    """A denoiser ``D(x, sigma)`` known in closed form; subclasses implement :meth:`denoise`.

    ``x`` is ``(B, *data_shape)``; ``sigma`` a float, 0-d or ``(B,)`` tensor. Queries are cast to the
    model's dtype; they must be on the model's device (no hidden transfers).

    A subclass writes ``denoise(x, sigma)`` for a validated ``x`` and a ``(B,)`` sigma tensor; the class
    keeps that body as ``_denoise`` (what :meth:`forward` and :meth:`score` call after validating once)
    and makes the public ``denoise`` validate first, so ``model.denoise(x, 0.3)`` takes every sigma
    form that ``model(x, 0.3)`` takes.
    """

    data_shape: tuple[int, ...]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        body = cls.__dict__.get("denoise")
        if body is not None and not getattr(body, "_validates", False):
            cls._denoise = body  # type: ignore[assignment]
            cls.denoise = _validating(body)  # type: ignore[assignment]

    def bind_training_set(self, data: object, device: Optional[Union[str, torch.device]], group: object) -> TrainingSet:
        """Hold ``data`` as the streamed training set (``.trainset``; DESIGN.md §7) and take its
        ``data_shape``, ``n_points`` and ``dim`` (the models built on the training points)."""
        self.trainset = TrainingSet(data, check_device(device), group)
        self.data_shape = self.trainset.data_shape
        self.n_points = self.trainset.n_points
        self.dim = self.trainset.dim
        return self.trainset

    def _reference(self) -> Tensor:
        """A tensor whose dtype and device are the model's (its first buffer)."""
        for b in self.buffers():
            return b
        raise RuntimeError(f"{type(self).__name__} has no buffers")

    def prepare(self, x: Tensor, sigma: SigmaLike, allow_zero: bool = False) -> tuple[Tensor, Tensor]:
        """Validate ``x`` and ``sigma``; return ``x`` in the model dtype and sigma as ``(B,)``."""
        ref = self._reference()
        check_query(x, self.data_shape)
        if x.device != ref.device:
            raise ValueError(
                f"x is on {x.device} but {type(self).__name__} holds its data on {ref.device}; "
                f"move one of them (model.to(device) or x.to(device))"
            )
        x = x.to(ref.dtype)
        return x, as_sigma(sigma, x.shape[0], x, allow_zero=allow_zero)

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x, sigma)`` for validated ``x`` (model dtype) and ``sigma`` of shape ``(B,)``: a subclass's ``denoise``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement denoise")

    def denoise(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """The denoiser ``D(x, sigma)`` for a float, 0-d or ``(B,)`` sigma (the same as calling the model)."""
        x, s = self.prepare(x, sigma)
        return self._denoise(x, s)

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:  # noqa: D401
        """The denoiser ``D(x, sigma)``."""
        x, s = self.prepare(x, sigma)
        return self._denoise(x, s)

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (DESIGN.md §2)."""
        x, s = self.prepare(x, sigma)
        return (self._denoise(x, s) - x) / bcast(s, x) ** 2

    def extra_repr(self) -> str:
        ref = self._reference()
        return f"data_shape={self.data_shape}, dtype={ref.dtype}, device={ref.device}"


def _validating(body: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The public ``denoise`` around a subclass's body: validate ``x`` and ``sigma`` once, then run it."""

    @functools.wraps(body)
    def denoise(self: AnalyticDenoiser, x: Tensor, sigma: SigmaLike) -> Tensor:
        x, s = self.prepare(x, sigma)
        return body(self, x, s)

    denoise._validates = True  # type: ignore[attr-defined]
    return denoise
