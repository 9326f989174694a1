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


_TIERS = ("jacrev", "loop", "jvp", "fd")


class Jacobian:
    """Dense Jacobians ``z -> (f(z), J)`` with ``J[b] = df_b/dz_b`` of shape ``(B, d, d)`` for a flat field.

    Tried in order, each failure (``RuntimeError``) switching this object to the next tier with
    one warning:

    1. ``"jacrev"``: reverse mode on the batch-summed output. Sample ``b``'s output depends on
       ``z_b`` only, so ``d(sum_b f_b)/dz = [J_1 ... J_B]``: one ``torch.func.jacrev`` (``d``
       vmapped VJPs over the whole batch, ``chunk_size`` at a time) gives every sample's
       Jacobian. This equals ``vmap(jacrev(f_single))`` but, unlike vmap over samples, tolerates
       data-dependent Python control flow in the field (input validation).
    2. ``"loop"``: for fields ``torch.func`` cannot transform (e.g. custom autograd functions
       without functorch support): one ``torch.autograd.grad`` per output component, batched
       over samples.
    3. ``"jvp"``: for fields reverse mode cannot differentiate (in-place updates of tensors saved
       for backward): forward mode (exact), the ``d`` unit tangents stacked into the batch
       (``B x chunk_size`` rows per call of the field).
    4. ``"fd"``: for fields no AD can handle (non-torch code): central differences with step
       ``e = eps^(1/3) max(1, |z_b|_inf)`` per sample, stacked like tier 3 (relative error
       ~ ``eps^(2/3)``).
    """

    def __init__(self, f: FlatField, chunk_size: Optional[int] = None) -> None:
        self.f = f
        self.chunk_size = chunk_size
        self.mode = getattr(f, "jacobian_mode", "jacrev")
        if self.mode not in _TIERS:
            raise ValueError(f"jacobian_mode {self.mode!r} is not one of {_TIERS}")

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        while True:
            try:
                if self.mode == "jacrev":
                    return self._jacrev(z)
                if self.mode == "loop":
                    return self._loop(z)
                if self.mode == "jvp":
                    return self._jvp(z)
                return self._fd(z)
            except RuntimeError as exc:
                if self.mode == "fd":
                    raise
                nxt = _TIERS[_TIERS.index(self.mode) + 1]
                warnings.warn(
                    f"Jacobian by {self.mode!r} failed ({str(exc).splitlines()[0][:100]}); using {nxt!r}",
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
            states = z.unsqueeze(0).expand(c, b, d).reshape(c * b, d)
            tangents = eye[start : start + c].unsqueeze(1).expand(c, b, d).reshape(c * b, d)
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


def jacobian(field: Field, x: Tensor, *, chunk_size: Optional[int] = None) -> Tensor:
    """Jacobian ``df/dx`` of a batched field at each state, ``(B, d, d)`` over flattened states.

    ``x``: ``(B, *shape)``; ``d = prod(shape)``. ``chunk_size`` bounds how many VJPs (or JVPs,
    finite-difference columns) run at once (memory ``~ chunk_size x`` one pass; ``None``: all ``d``). See :class:`Jacobian` for
    the method (``torch.func.jacrev``, batched, no loop over samples) and its fallbacks.
    """
    x = check_state("x", x)
    shape = tuple(x.shape[1:])
    f = flatten_field(field, shape)
    out, jac = Jacobian(f, chunk_size)(x.detach().reshape(x.shape[0], -1))
    _nonfinite_rows("field(x)", out)
    _nonfinite_rows("the Jacobian of field at x", jac)
    return jac


class JVP:
    """Batched Jacobian-vector products ``(z, v) -> J(z) v`` of a flat field.

    Forward mode (``torch.func.jvp``: about one extra forward pass per product). A field that
    forward mode cannot handle switches this operator, with one warning, to central finite
    differences ``(f(z + e v) - f(z - e v)) / 2e`` with ``e = eps^(1/3) (1 + |z|) / |v|`` per
    sample (relative error ~ ``eps^(2/3)``).
    """

    def __init__(self, f: FlatField) -> None:
        self.f = f
        self.finite_differences = False

    def __call__(self, z: Tensor, v: Tensor) -> Tensor:
        if not self.finite_differences:
            try:
                return torch.func.jvp(self.f, (z,), (v,))[1].detach()
            except RuntimeError as exc:
                warnings.warn(
                    f"field does not support forward-mode AD ({str(exc).splitlines()[0][:120]}); "
                    "using central finite differences for Jacobian-vector products",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.finite_differences = True
        eps = torch.finfo(z.dtype).eps ** (1.0 / 3.0)
        vn = v.norm(dim=1, keepdim=True)
        e = eps * (1 + z.norm(dim=1, keepdim=True)) / torch.where(vn > 0, vn, torch.ones_like(vn))
        with torch.no_grad():
            return (self.f(z + e * v) - self.f(z - e * v)) / (2 * e)


def jvp(field: Field, x: Tensor, v: Tensor) -> Tensor:
    """``J(x) v`` for each sample, ``(B, *shape)`` (forward mode, see :class:`JVP`)."""
    x = check_state("x", x)
    v = check_state("v", v)
    if v.shape != x.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected {tuple(x.shape)} (the shape of x)")
    b = x.shape[0]
    f = flatten_field(field, tuple(x.shape[1:]))
    out = JVP(f)(x.detach().reshape(b, -1), v.detach().reshape(b, -1).to(x.dtype))
    _nonfinite_rows("J(x) v", out)
    return out.reshape(x.shape)
