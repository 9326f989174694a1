"""Jacobians and Jacobian-vector products of batched vector fields (DESIGN.md §4, via ``torch.func``).

A *field* maps states ``(B, *shape)`` to velocities ``(B, *shape)`` and acts on every sample
independently (``dx/dtau = f(x)``; e.g. a multiplicative model's ``f`` or a score at fixed sigma).
Internally states are flattened to ``(B, d)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from .._checks import check_finite, check_state

Field = Callable[[Tensor], Tensor]
"""A batched vector field ``(B, *shape) -> (B, *shape)``."""

FlatField = Callable[[Tensor], Tensor]
"""The same field on flattened states ``(B, d) -> (B, d)``."""


def flatten_field(field: Field, shape: tuple[int, ...]) -> FlatField:
    """Wrap ``field`` as ``(B, d) -> (B, d)``, checking that it returns its input's shape; the
    output is cast to the input's dtype (the solvers work in the dtype of the start points)."""
    if not callable(field):
        raise ValueError(f"field must be callable (B, *shape) -> (B, *shape), got {type(field).__name__}")
    d = math.prod(shape)

    def flat(z: Tensor) -> Tensor:
        out = field(z.reshape(z.shape[0], *shape))
        if not isinstance(out, Tensor):
            raise ValueError(f"field returned {type(out).__name__}; expected a tensor of shape {(z.shape[0], *shape)}")
        if tuple(out.shape) != (z.shape[0], *shape):
            raise ValueError(
                f"field returned shape {tuple(out.shape)}; expected {(z.shape[0], *shape)} (the shape of its input)"
            )
        return out.reshape(z.shape[0], d).to(z.dtype)

    # a field (or the object whose method it is) may name the tier that works for it, e.g. "jvp"
    # for kernels that update tensors in place and so cannot be reverse-differentiated
    owner = getattr(field, "__self__", field)
    flat.jacobian_mode = getattr(owner, "jacobian_mode", "jacrev")  # type: ignore[attr-defined]
    return flat


def _nonfinite_rows(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:8].tolist()
        raise ValueError(f"{name} is NaN/Inf for {int(bad.sum())} state(s) (first indices {rows}); expected finite values")


_TIERS = ("jacrev", "jvp", "loop", "fd")


def check_fd_dtype(z: Tensor) -> None:
    """Finite differences only in float64 (their error in float32 is ~1e-4 relative or worse)."""
    if z.dtype != torch.float64:
        raise ValueError(
            f"finite-difference derivatives need float64 states, got {z.dtype}: in lower precision their "
            "error (eps^(2/3) relative, ~5e-5 in float32) is larger than the answers it would replace; "
            "pass x.double() (and a float64 model)"
        )


class Jacobian:
    """Dense Jacobians ``z -> (f(z), J)`` with ``J[b] = df_b/dz_b`` of shape ``(B, d, d)`` for a flat field.

    Exact tiers, tried in order, each failure (``RuntimeError``) switching this object to the next
    exact tier with one warning:

    1. ``"jacrev"``: reverse mode on the batch-summed output. Sample ``b``'s output depends on
       ``z_b`` only, so ``d(sum_b f_b)/dz = [J_1 ... J_B]``: one ``torch.func.jacrev`` (``d``
       vmapped VJPs over the whole batch, ``chunk_size`` at a time) gives every sample's
       Jacobian. This equals ``vmap(jacrev(f_single))`` but, unlike vmap over samples, tolerates
       data-dependent Python control flow in the field (input validation).
    2. ``"jvp"``: for fields reverse mode cannot differentiate (in-place updates of tensors saved
       for backward, e.g. the streamed analytic kernels): forward mode (exact), the ``d`` unit
       tangents stacked into the batch (``B x chunk_size`` rows per call of the field, as
       contiguous copies so that in-place kernels never write through an expanded view).
    3. ``"loop"``: for fields ``torch.func`` cannot transform (e.g. custom autograd functions
       without functorch support): one ``torch.autograd.grad`` per output component, batched
       over samples.

    When every exact tier fails a ``RuntimeError`` names each failure. ``"fd"`` (central
    differences with step ``e = eps^(1/3) max(1, |z_b|_inf)`` per sample, stacked like tier 2,
    relative error ~ ``eps^(2/3)``) runs only when asked for (``finite_differences=True``, or a
    field declaring ``jacobian_mode = "fd"``) and only on float64 states: in float32 its error
    (~5e-5 relative, more near small sigma) would pass silently for an exact Jacobian.
    """

    def __init__(self, f: FlatField, chunk_size: Optional[int] = None, finite_differences: bool = False) -> None:
        self.f = f
        self.chunk_size = chunk_size
        self.mode = "fd" if finite_differences else getattr(f, "jacobian_mode", "jacrev")
        if self.mode not in _TIERS:
            raise ValueError(f"jacobian_mode {self.mode!r} is not one of {_TIERS}")
        self.failures: list[str] = []

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        while True:
            try:
                if self.mode == "jacrev":
                    return self._jacrev(z)
                if self.mode == "loop":
                    return self._loop(z)
                if self.mode == "jvp":
                    return self._jvp(z)
                check_fd_dtype(z)
                return self._fd(z)
            except RuntimeError as exc:
                self.failures.append(f"{self.mode}: {str(exc).splitlines()[0][:160]}")
                if self.mode in ("loop", "fd"):
                    raise RuntimeError(
                        "cannot differentiate the field exactly ("
                        + "; ".join(self.failures)
                        + "); for non-torch fields pass finite_differences=True (float64 states only)"
                    ) from exc
                nxt = _TIERS[_TIERS.index(self.mode) + 1]
                warnings.warn(
                    f"Jacobian by {self.mode!r} failed ({str(exc).splitlines()[0][:100]}); using {nxt!r} (exact)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.mode = nxt

    def _jacrev(self, z: Tensor) -> tuple[Tensor, Tensor]:
        def summed(u: Tensor) -> tuple[Tensor, Tensor]:
            out = self.f(u)
            return out.sum(0), out

        jac, out = torch.func.jacrev(summed, has_aux=True, chunk_size=self.chunk_size)(z)
        return out.detach(), jac.permute(1, 0, 2).detach()  # (d_out, B, d_in) -> (B, d_out, d_in)

    def _loop(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            u = z.detach().requires_grad_(True)
            out = self.f(u)
            d = out.shape[1]
            rows = [
                torch.autograd.grad(
                    out[:, j].sum(), u, retain_graph=j < d - 1, allow_unused=True, materialize_grads=True
                )[0]
                for j in range(d)
            ]
        return out.detach(), torch.stack(rows, dim=1)

    def _columns(self, z: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """Input components in chunks: ``(start, states (B*c, d), unit tangents (B*c, d))``.

        Row ``(j, b)`` of a chunk is sample ``b`` with tangent ``e_j``: since samples are independent,
        one batched call of the field on the stacked copies gives ``c`` Jacobian columns at once.
        """
        b, d = z.shape
        step = d if self.chunk_size is None else max(1, int(self.chunk_size))
        eye = torch.eye(d, dtype=z.dtype, device=z.device)
        out = []
        for start in range(0, d, step):
            c = min(step, d - start)
            # contiguous copies: for B = 1 reshape would keep the expanded (stride-0) view, and a
            # field writing into its input's storage would then fail (or, worse, alias rows)
            states = z.unsqueeze(0).expand(c, b, d).contiguous().reshape(c * b, d)
            tangents = eye[start : start + c].unsqueeze(1).expand(c, b, d).contiguous().reshape(c * b, d)
            out.append((c, states, tangents))
        return out

    def _jvp(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, d = z.shape
        cols = []
        for c, states, tangents in self._columns(z):
            _, col = torch.func.jvp(self.f, (states,), (tangents,))
            cols.append(col.detach().reshape(c, b, d))
        with torch.no_grad():
            out = self.f(z)
        return out, torch.cat(cols).permute(1, 2, 0)  # (d_in, B, d_out) -> (B, d_out, d_in)

    def _fd(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, d = z.shape
        e = torch.finfo(z.dtype).eps ** (1.0 / 3.0) * z.abs().amax(dim=1).clamp_min(1.0)
        cols = []
        with torch.no_grad():
            out = self.f(z)
            for c, states, tangents in self._columns(z):
                step = tangents * e.repeat(c)[:, None]
                diff = (self.f(states + step) - self.f(states - step)) / (2 * e.repeat(c)[:, None])
                cols.append(diff.reshape(c, b, d))
        return out, torch.cat(cols).permute(1, 2, 0)


def jacobian(field: Field, x: Tensor, *, chunk_size: Optional[int] = None, finite_differences: bool = False) -> Tensor:
    """Jacobian ``df/dx`` of a batched field at each state, ``(B, d, d)`` over flattened states.

    ``x``: ``(B, *shape)``; ``d = prod(shape)``. ``chunk_size`` bounds how many VJPs (or JVPs,
    finite-difference columns) run at once (memory ``~ chunk_size x`` one pass; ``None``: all ``d``). See :class:`Jacobian` for
    the method (``torch.func.jacrev``, batched, no loop over samples) and its exact fallbacks.
    ``finite_differences=True`` uses central differences instead (fields no AD can handle;
    float64 ``x`` only).
    """
    x = check_state("x", x)
    shape = tuple(x.shape[1:])
    f = flatten_field(field, shape)
    out, jac = Jacobian(f, chunk_size, finite_differences)(x.detach().reshape(x.shape[0], -1))
    _nonfinite_rows("field(x)", out)
    _nonfinite_rows("the Jacobian of field at x", jac)
    return jac


class JVP:
    """Batched Jacobian-vector products ``(z, v) -> J(z) v`` of a flat field.

    Forward mode (``torch.func.jvp``: about one extra forward pass per product), exact. A field
    that forward mode cannot handle raises a ``RuntimeError`` saying so, unless finite differences
    were asked for (``finite_differences=True`` or a field declaring ``jacobian_mode = "fd"``;
    float64 states only): then ``(f(z + e v) - f(z - e v)) / 2e`` with
    ``e = eps^(1/3) (1 + |z|) / |v|`` per sample (relative error ~ ``eps^(2/3)``).
    """

    def __init__(self, f: FlatField, finite_differences: bool = False) -> None:
        self.f = f
        self.finite_differences = finite_differences or getattr(f, "jacobian_mode", None) == "fd"

    def __call__(self, z: Tensor, v: Tensor) -> Tensor:
        if not self.finite_differences:
            try:
                return torch.func.jvp(self.f, (z.contiguous(),), (v.contiguous(),))[1].detach()
            except RuntimeError as exc:
                raise RuntimeError(
                    f"field does not support forward-mode AD ({str(exc).splitlines()[0][:160]}); for non-torch "
                    "fields pass finite_differences=True (float64 states only) or set field.jacobian_mode = 'fd'"
                ) from exc
        check_fd_dtype(z)
        eps = torch.finfo(z.dtype).eps ** (1.0 / 3.0)
        vn = v.norm(dim=1, keepdim=True)
        e = eps * (1 + z.norm(dim=1, keepdim=True)) / torch.where(vn > 0, vn, torch.ones_like(vn))
        with torch.no_grad():
            return (self.f(z + e * v) - self.f(z - e * v)) / (2 * e)


def jvp(field: Field, x: Tensor, v: Tensor, *, finite_differences: bool = False) -> Tensor:
    """``J(x) v`` for each sample, ``(B, *shape)`` (forward mode, see :class:`JVP`)."""
    x = check_state("x", x)
    v = check_state("v", v)
    if v.shape != x.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected {tuple(x.shape)} (the shape of x)")
    b = x.shape[0]
    f = flatten_field(field, tuple(x.shape[1:]))
    out = JVP(f, finite_differences)(x.detach().reshape(b, -1), v.detach().reshape(b, -1).to(x.dtype))
    _nonfinite_rows("J(x) v", out)
    return out.reshape(x.shape)
