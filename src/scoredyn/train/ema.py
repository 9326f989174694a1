"""Exponential moving average of the weights, with a warm-up so that short runs are usable.

The decay at optimiser step ``t`` (0-based) is ``min(decay, (1 + t) / (10 + t))`` — the
``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage`` — so the average tracks the
weights closely early on (0.1 at the first step, 0.5 at step 8, 0.9 at step 80) instead of staying
stuck at the initialisation, as a plain 0.9999 EMA does in a short run (DESIGN.md §8).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay used at 0-based step ``step``."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """``ema <- decay * ema + (1 - decay) * weights`` after each optimiser step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Average in ``model``'s current weights; returns the decay used."""
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_p = [p for p in self.module.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        return d
