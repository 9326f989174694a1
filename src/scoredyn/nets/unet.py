"""A small DDPM++/NCSN++-style U-Net for 8x8, 28x28 and 32x32 images.

Follows the structure of Song et al. 2021 (DDPM++) as used in EDM (Karras et al. 2022, Appendix
F.2): residual blocks with GroupNorm and SiLU, skip connections scaled by 1/sqrt(2), optional
self-attention at chosen levels, average-pool downsampling and nearest-neighbour upsampling.
Sizes that the down-sampling does not divide (28x28 with four levels, say) are zero-padded up to
the next multiple and the output is cropped back.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import NoiseEmbedding, check_noise_input


def _groups(channels: int) -> int:
    """GroupNorm groups: about four channels per group, at most 32, dividing ``channels``."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """``(skip(x) + conv(silu(gn(conv(silu(gn(x))) + emb)))) / sqrt(2)``; the second conv starts at zero."""

    def __init__(self, cin: int, cout: int, emb_channels: Optional[int], dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_channels, cout) if emb_channels else None
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Optional[Tensor]) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * (1 / math.sqrt(2))


class Attention(nn.Module):
    """Multi-head self-attention over pixels, residual, output projection starting at zero."""

    def __init__(self, channels: int, head_channels: int = 64) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hh * ww).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, c, hh, ww)
        return (x + self.proj(h)) * (1 / math.sqrt(2))


class UNet(nn.Module):
    """``f(x)`` for images ``(B, channels, H, W)``; ``cond=True`` adds an embedding of ``c_noise``.

    Levels ``l = 0..L-1`` have ``base * channel_mult[l]`` channels and ``num_blocks`` residual
    blocks each (encoder) or ``num_blocks + 1`` (decoder); ``attn_levels`` lists the levels with
    self-attention (default: the lowest resolution). With ``cond=False`` there is no embedding
    path. The output convolution starts at zero (an untrained multiplicative model is ``D = x``).
    """

    def __init__(
        self,
        channels: int,
        base: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 2,
        attn_levels: Optional[Sequence[int]] = None,
        dropout: float = 0.0,
        cond: bool = False,
    ) -> None:
        super().__init__()
        mult = [int(m) for m in channel_mult]
        if int(channels) < 1 or int(base) < 1 or int(num_blocks) < 1 or not mult or min(mult) < 1:
            raise ValueError(
                f"UNet needs channels, base, num_blocks >= 1 and a non-empty channel_mult of positive ints; "
                f"got channels={channels}, base={base}, num_blocks={num_blocks}, channel_mult={channel_mult}"
            )
        attn = [len(mult) - 1] if attn_levels is None else [int(a) for a in attn_levels]
        if any(not 0 <= a < len(mult) for a in attn):
            raise ValueError(f"attn_levels {attn} must be level indices in [0, {len(mult) - 1}]")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config: dict[str, Any] = dict(channels=int(channels), base=int(base), channel_mult=mult,
                                           num_blocks=int(num_blocks), attn_levels=attn, dropout=float(dropout),
                                           cond=bool(cond))
        self.channels, self.cond, self.levels = int(channels), bool(cond), len(mult)
        emb_ch = 4 * int(base) if self.cond else None
        if emb_ch:
            self.emb = NoiseEmbedding(int(base), emb_ch)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_ch, float(dropout))

        self.inp = nn.Conv2d(int(channels), int(base), 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [int(base)], int(base)
        for lvl, m in enumerate(mult):
            for _ in range(int(num_blocks)):
                mods = [block(ch, int(base) * m)]
                ch = int(base) * m
                if lvl in attn:
                    mods.append(Attention(ch))
                self.down.append(nn.ModuleList(mods))
                skips.append(ch)
            if lvl < len(mult) - 1:
                self.down.append(nn.ModuleList([nn.AvgPool2d(2)]))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch), Attention(ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(mult))):
            m = mult[lvl]
            for _ in range(int(num_blocks) + 1):
                mods = [block(ch + skips.pop(), int(base) * m)]
                ch = int(base) * m
                if lvl in attn:
                    mods.append(Attention(ch))
                self.up.append(nn.ModuleList(mods))
            if lvl > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, int(channels), 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(mods: nn.ModuleList, h: Tensor, emb: Optional[Tensor]) -> Tensor:
        for mod in mods:
            h = mod(h, emb) if isinstance(mod, (ResBlock, Attention)) else mod(h)
        return h

    def forward(self, x: Tensor, noise_emb: Optional[Tensor] = None) -> Tensor:
        check_noise_input(self, self.cond, noise_emb, x.shape[0])
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {self.channels}, H, W)")
        emb = self.emb(noise_emb) if noise_emb is not None else None
        hgt, wid = x.shape[-2:]
        k = 2 ** (self.levels - 1)
        pad_h, pad_w = (-hgt) % k, (-wid) % k
        h = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        h = self.inp(h)
        hs = [h]
        for mods in self.down:
            h = self._run(mods, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for mods in self.up:
            if isinstance(mods[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(mods, h, emb)
        h = self.out(F.silu(self.out_norm(h)))
        return h[..., :hgt, :wid]
