"""Common base of the analytical denoisers (DESIGN.md §2: the score is ``(D(x, sigma) - x) / sigma^2``)."""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import SigmaLike, as_sigma, bcast, check_query


class AnalyticDenoiser(nn.Module):
    """A denoiser ``D(x, sigma)`` known in closed form; subclasses implement :meth:`denoise`.

    ``x`` is ``(B, *data_shape)``; ``sigma`` a float, 0-d or ``(B,)`` tensor. Queries are cast to the
    model's dtype; they must be on the model's device (no hidden transfers).
    """

    data_shape: tuple[int, ...]

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

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x, sigma)`` for validated ``x`` (model dtype) and ``sigma`` of shape ``(B,)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:  # noqa: D401
        """The denoiser ``D(x, sigma)``."""
        x, s = self.prepare(x, sigma)
        return self.denoise(x, s)

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (DESIGN.md §2)."""
        x, s = self.prepare(x, sigma)
        return (self.denoise(x, s) - x) / bcast(s, x) ** 2

    def extra_repr(self) -> str:
        ref = self._reference()
        return f"data_shape={self.data_shape}, dtype={ref.dtype}, device={ref.device}"
