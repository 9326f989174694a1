"""Wrap a network ``f`` as a denoiser ``D(x, sigma)`` under one of three conditionings (DESIGN.md §2).

Every wrapper writes ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022,
Eq. 7) and owns its four coefficients:

| conditioning | c_skip | c_out | c_in | c_noise | score |
|---|---|---|---|---|---|
| ``multiplicative`` (NCSNv2, Kim) | 1 | sigma | 1 | none | ``f(x) / sigma`` |
| ``unconditional`` (Zhou et al.) | 1 | sigma^2 | 1 | none | ``f(x)`` |
| ``edm`` (Karras et al. 2022, Table 1) | sd^2/(sigma^2+sd^2) | sigma sd/sqrt(sigma^2+sd^2) | 1/sqrt(sigma^2+sd^2) | log(sigma)/4 | ``(D - x)/sigma^2`` |

The first two never pass sigma to the network (it is built with ``cond=False``), so ``f`` is an
autonomous vector field: :meth:`field` returns it for ``dx/dtau = f(x)``.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from .._checks import SigmaLike, as_sigma, bcast, check_positive
from .mlp import MLP
from .unet import UNet

CONDITIONINGS = ("multiplicative", "unconditional", "edm")
NETS: dict[str, type[nn.Module]] = {"MLP": MLP, "UNet": UNet}
"""The network classes a checkpoint may name (an allow-list: configs never import arbitrary code)."""


class Preconditioned(nn.Module):
    """A denoiser ``D(x, sigma)`` around a network; subclasses give the coefficients."""

    conditioning: str = ""
    sigma_aware: bool = True

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.data_shape: Optional[tuple[int, ...]] = None
        net_cond = getattr(net, "cond", None)
        if net_cond is not None and bool(net_cond) != self.sigma_aware:
            raise ValueError(
                f"conditioning {self.conditioning!r} needs a network built with cond={self.sigma_aware} "
                f"({'it must see c_noise' if self.sigma_aware else 'it must get no sigma input'}); "
                f"got {type(net).__name__} with cond={bool(net_cond)}"
            )

    def coefficients(self, sigma: Tensor) -> tuple[Optional[Tensor], Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(c_skip, c_out, c_in, c_noise)`` for sigma (B,); ``None`` means 1 (or no noise input)."""
        raise NotImplementedError

    def run_net(self, x: Tensor, c_noise: Optional[Tensor]) -> Tensor:
        """The network on ``x`` cast to its parameters' dtype; the output in ``x``'s dtype."""
        p = next(self.net.parameters(), None)
        dtype = x.dtype if p is None else p.dtype
        noise = None if c_noise is None else c_noise.to(dtype)
        return self.net(x.to(dtype), noise).to(x.dtype)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``D(x, sigma)`` for a validated sigma of shape (B,) in ``x``'s dtype (no checks, no syncs)."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f = self.run_net(x if c_in is None else bcast(c_in, x) * x, c_noise)
        return (x if c_skip is None else bcast(c_skip, x) * x) + bcast(c_out, x) * f

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:  # noqa: D401
        """The denoiser ``D(x, sigma)``; sigma is a float, a 0-d or a (B,) tensor."""
        return self.denoise(x, self._sigma(x, sigma))

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (DESIGN.md §2)."""
        s = self._sigma(x, sigma)
        return (self.denoise(x, s) - x) / bcast(s, x) ** 2

    def _sigma(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (B, *data_shape), got {getattr(x, 'shape', type(x).__name__)}")
        if self.data_shape is not None and tuple(x.shape[1:]) != tuple(self.data_shape):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, self.data_shape))})")
        return as_sigma(sigma, x.shape[0], x)

    def spec(self) -> dict[str, Any]:
        """What :func:`build` needs to rebuild this denoiser (JSON-serialisable)."""
        name = type(self.net).__name__
        if NETS.get(name) is not type(self.net):
            raise ValueError(
                f"cannot describe a {name} network in a checkpoint config; allowed network classes: {sorted(NETS)}"
            )
        return {"net": name, "net_kwargs": dict(self.net.config), "conditioning": self.conditioning,  # type: ignore[attr-defined]
                "sigma_data": self.sigma_data}

    def extra_repr(self) -> str:
        return f"conditioning={self.conditioning!r}, sigma_data={self.sigma_data}"


class _SigmaBlind(Preconditioned):
    """``D = x + sigma^p f(x)``: the network never sees sigma."""

    sigma_aware = False
    power = 1

    def coefficients(self, sigma: Tensor) -> tuple[None, Tensor, None, None]:
        return None, sigma**self.power, None, None

    def field(self, x: Tensor) -> Tensor:
        """The sigma-free network output ``f(x)``, integrated by the autonomous ODE ``dx/dtau = f(x)``."""
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (B, *data_shape), got {getattr(x, 'shape', type(x).__name__)}")
        return self.run_net(x, None)

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``f(x) / sigma^(2 - p)``: exact, without the cancellation of ``(D - x) / sigma^2``."""
        s = self._sigma(x, sigma)
        return self.field(x) / bcast(s, x) ** (2 - self.power)


class Multiplicative(_SigmaBlind):
    """NCSNv2 / Kim: ``D = x + sigma f(x)``, score ``f(x) / sigma``."""

    conditioning = "multiplicative"
    power = 1


class Unconditional(_SigmaBlind):
    """Zhou et al.: ``D = x + sigma^2 f(x)``, score ``f(x)``."""

    conditioning = "unconditional"
    power = 2


class EDM(Preconditioned):
    """Karras et al. 2022, Table 1: the network sees ``c_in x`` and ``c_noise = log(sigma) / 4``."""

    conditioning = "edm"
    sigma_aware = True

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).rsqrt()
        return sd2 * norm**2, sigma * self.sigma_data * norm, norm, sigma.log() / 4


_CLASSES: dict[str, type[Preconditioned]] = {"multiplicative": Multiplicative, "unconditional": Unconditional, "edm": EDM}


def check_conditioning(conditioning: str) -> str:
    """Validate a conditioning name."""
    if conditioning not in _CLASSES:
        raise ValueError(f"unknown conditioning {conditioning!r}; expected one of {', '.join(CONDITIONINGS)}")
    return conditioning


def precondition(net: nn.Module, conditioning: str, sigma_data: float = 0.5) -> Preconditioned:
    """The denoiser ``D(x, sigma)`` of ``net`` under ``conditioning`` (see the module table)."""
    return _CLASSES[check_conditioning(conditioning)](net, sigma_data)


def build(spec: dict[str, Any]) -> Preconditioned:
    """Rebuild a denoiser from :meth:`Preconditioned.spec` (network class from the allow-list only)."""
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a dict with keys net, net_kwargs, conditioning; got {type(spec).__name__}")
    missing = [k for k in ("net", "net_kwargs", "conditioning") if k not in spec]
    if missing:
        raise ValueError(f"model spec lacks {missing}; expected keys net, net_kwargs, conditioning[, sigma_data]")
    cls = NETS.get(spec["net"]) if isinstance(spec["net"], str) else None
    if cls is None:
        raise ValueError(f"unknown network class {spec['net']!r}; allowed: {sorted(NETS)}")
    kwargs = spec["net_kwargs"]
    if not isinstance(kwargs, dict):
        raise ValueError(f"net_kwargs must be a dict, got {type(kwargs).__name__}")
    kwargs = {"cond": _CLASSES[check_conditioning(spec["conditioning"])].sigma_aware, **kwargs}
    try:
        net = cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad net_kwargs for {spec['net']}: {e}") from None
    return precondition(net, spec["conditioning"], spec.get("sigma_data", 0.5))
