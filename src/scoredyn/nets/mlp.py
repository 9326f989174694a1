"""A residual-free SiLU MLP for flat data, with an optional noise-level embedding (DESIGN.md §2).

Built with ``cond=False`` the network has no embedding path at all, so a ``multiplicative`` or
``unconditional`` denoiser (NCSNv2 / Kim, Zhou et al.) cannot see sigma even by accident.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn


class FourierEmbedding(nn.Module):
    """Fixed sinusoidal features ``[cos(2 pi f_k c), sin(2 pi f_k c)]`` of a scalar ``c`` (B,).

    Frequencies are geometric in ``[f_min, f_max]``; with EDM's ``c_noise = log(sigma)/4`` (Karras et
    al. 2022, Table 1) the range sigma in [0.002, 80] maps to c in [-1.6, 1.1], which the default
    band resolves from coarse (period 4) to fine (period 1/32).
    """

    def __init__(self, num_channels: int, f_min: float = 0.25, f_max: float = 32.0) -> None:
        super().__init__()
        if num_channels < 2 or num_channels % 2:
            raise ValueError(f"num_channels must be an even integer >= 2, got {num_channels}")
        freqs = torch.exp(torch.linspace(math.log(f_min), math.log(f_max), num_channels // 2))
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """``c_noise`` (B,) -> an embedding (B, out_channels): Fourier features and a two-layer SiLU MLP."""

    def __init__(self, fourier_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fourier = FourierEmbedding(fourier_channels)
        self.mlp = nn.Sequential(
            nn.Linear(fourier_channels, out_channels), nn.SiLU(), nn.Linear(out_channels, out_channels), nn.SiLU()
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.fourier(c_noise))


def check_noise_input(net: nn.Module, cond: bool, noise_emb: Optional[Tensor], batch: int) -> None:
    """A conditional net needs ``noise_emb`` of shape (B,); a sigma-blind one must not get any."""
    if cond and noise_emb is None:
        raise ValueError(f"{type(net).__name__} was built with cond=True and needs noise_emb (B,); got None")
    if not cond and noise_emb is not None:
        raise ValueError(
            f"{type(net).__name__} was built with cond=False (no noise input); got a noise_emb. "
            "Build it with cond=True to condition on the noise level"
        )
    if noise_emb is not None and tuple(noise_emb.shape) != (batch,):
        raise ValueError(f"noise_emb has shape {tuple(noise_emb.shape)}; expected ({batch},)")


class MLP(nn.Module):
    """``f(x)``: ``depth`` hidden SiLU layers of width ``hidden`` on flattened inputs ``(B, *shape)``.

    With ``cond=True`` each hidden layer adds a projection of the noise embedding of ``c_noise``
    (for EDM preconditioning); with ``cond=False`` there is no such path. The output layer starts at
    zero, so an untrained multiplicative denoiser is the identity ``D(x, sigma) = x``.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, cond: bool = False, emb_channels: int = 64) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("emb_channels", emb_channels)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        self.config: dict[str, Any] = dict(dim=int(dim), hidden=int(hidden), depth=int(depth), cond=bool(cond),
                                           emb_channels=int(emb_channels))
        self.dim, self.cond = int(dim), bool(cond)
        widths = [self.dim] + [int(hidden)] * int(depth)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(int(hidden), self.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.cond:
            self.emb = NoiseEmbedding(2 * (int(emb_channels) // 2 or 1), int(hidden))
            self.emb_proj = nn.ModuleList(nn.Linear(int(hidden), int(hidden)) for _ in range(int(depth)))

    def forward(self, x: Tensor, noise_emb: Optional[Tensor] = None) -> Tensor:
        check_noise_input(self, self.cond, noise_emb, x.shape[0])
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != self.dim:
            raise ValueError(f"x has {h.shape[1]} features per sample (shape {tuple(x.shape)}); expected dim={self.dim}")
        emb = self.emb(noise_emb) if noise_emb is not None else None
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if emb is not None:
                h = h + self.emb_proj[i](emb)
            h = nn.functional.silu(h)
        return self.out(h).reshape(x.shape)
