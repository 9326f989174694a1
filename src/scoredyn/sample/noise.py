"""Per-sample seeded Gaussian noise: a sample's draws depend on its own seed and the step index
only, never on the batch size, the batch order or the device (DESIGN.md §8, last pitfall).

Steps are grouped in blocks of ``K = block_steps(shape)`` consecutive steps (``K`` depends on the
per-sample shape only: up to 64 steps for small data, 1 step from 1024 values per sample on). The
draws of sample ``b`` for the steps of block ``k // K`` come from one CPU ``torch.Generator``
(Mersenne Twister) seeded with a 64-bit mix of ``(seeds[b], k // K)``; step ``k`` takes row
``k % K`` of that block. A sampler run keeps the current block (:class:`NoiseStream`), so the
per-sample Python cost (seeding plus one ``randn`` call, about 15 us) is paid once per block rather
than once per step, and the batch is moved to the device in one copy per block.

Convention: step 0 (the default) is the initial state ``x = sigma_max * noise(seeds, shape)``;
a sampler's ``k``-th noise draw uses step ``k + 1``, so the two never coincide.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_seeds, check_shape

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
BLOCK_VALUES = 1024
"""A block holds at most this many values per sample (beyond it, one step per block)."""
MAX_BLOCK = 64
"""At most this many steps per block."""

Device = Union[str, torch.device, None]


def _splitmix64(z: int) -> int:
    """The SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit integers."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(seed: int, block: int) -> int:
    """The 64-bit generator seed of sample ``seed`` for block ``block``."""
    return _splitmix64((_splitmix64(int(seed) & _MASK) + int(block) * _GOLDEN) & _MASK)


def block_steps(shape: Sequence[int]) -> int:
    """Steps per block for a per-sample ``shape``: ``clamp(1024 // numel, 1, 64)``."""
    numel = max(1, math.prod(int(n) for n in shape))
    return max(1, min(MAX_BLOCK, BLOCK_VALUES // numel))


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def noise_block(seeds: Sequence[int], shape: Sequence[int], block: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The CPU draws ``(B, K, *shape)`` of block ``block`` (steps ``block*K .. block*K + K - 1``)."""
    k = block_steps(shape)
    draw = _draw_dtype(dtype)
    buf = torch.empty((len(seeds), k, *shape), dtype=draw)
    gen = torch.Generator(device="cpu")
    for b, seed in enumerate(seeds):
        gen.manual_seed(stream_seed(seed, block))
        torch.randn((k, *shape), generator=gen, dtype=draw, out=buf[b])
    return buf


def _check(seeds: Sequence[int], shape: Sequence[int]) -> tuple[list[int], tuple[int, ...]]:
    try:
        n = len(seeds)
    except TypeError:
        raise ValueError(f"seeds must be a sequence of integers (one per sample), got {type(seeds).__name__}") from None
    if not n:
        raise ValueError("seeds is empty; expected one integer seed per sample")
    return list(check_seeds(seeds, n) or ()), check_shape("shape", shape)


def noise(
    seeds: Sequence[int], shape: Sequence[int], device: Device = None, dtype: torch.dtype = torch.float32, step: int = 0
) -> Tensor:
    """Standard normal draws ``(len(seeds), *shape)`` for step ``step``, row ``b`` from ``seeds[b]`` alone.

    Drawn on the CPU (float64 for float64, float32 otherwise, then cast), so the same seed gives
    the same numbers on every device. Samplers use :class:`NoiseStream`, which gives the same values.
    """
    return NoiseStream(seeds, shape, device, dtype)(step)


class NoiseStream:
    """:func:`noise` for successive steps of one sampler run, drawing a block of steps at a time."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: Device = None, dtype: torch.dtype = torch.float32) -> None:
        self.seeds, self.shape = _check(seeds, shape)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self.k = block_steps(self.shape)
        self._block: Optional[int] = None
        self._cache: Optional[Tensor] = None

    def __call__(self, step: int) -> Tensor:
        block, row = divmod(int(step), self.k)
        if block != self._block:
            cpu = noise_block(self.seeds, self.shape, block, self.dtype)
            pin = self.device.type == "cuda" and torch.cuda.is_available()
            self._cache = (cpu.pin_memory() if pin else cpu).to(self.device, self.dtype, non_blocking=pin)
            self._block = block
        assert self._cache is not None
        return self._cache[:, row]
