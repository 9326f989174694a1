"""Stop a diverging training run early, saying why (a running-median monitor of the loss).

A learning rate too large for the problem (or no gradient clipping) makes the denoising loss grow
by orders of magnitude long before it overflows to NaN; a run that only checks for NaN then "finishes"
with a loss of 1e17 and a useless model. :class:`DivergenceMonitor` keeps the per-step losses on the
device (no synchronisation per step) and, at each :meth:`~DivergenceMonitor.check` (the training
loop's log and checkpoint steps), compares every new loss with the median of the ``window`` losses
before it: a loss above ``factor`` times that median, or a non-finite loss, stops training with a
:class:`TrainingDiverged` error naming the step, the loss, the median and the likely causes (the
learning rate, and the data scale with the training data's norm).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Optional

import torch
from torch import Tensor

FACTOR = 1e3
"""Growth over the running median that counts as divergence (three orders of magnitude)."""
WINDOW = 200
"""Steps in the running median."""
MIN_HISTORY = 10
"""Steps seen before growth is judged (non-finite losses are caught from the first step)."""


class TrainingDiverged(RuntimeError):
    """The training loss diverged (see :class:`DivergenceMonitor`)."""


def data_scale(data: Tensor) -> str:
    """The training data's size in words: RMS and largest per-point Euclidean norm."""
    norms = torch.linalg.vector_norm(data.detach().reshape(data.shape[0], -1).double(), dim=1)
    return f"RMS point norm {float(norms.square().mean().sqrt()):.3g}, largest {float(norms.max()):.3g}"


class DivergenceMonitor:
    """Running-median divergence check of a per-step loss (module docstring).

    ``lr`` and ``data`` only feed the message. ``reduce`` (e.g. an all-reduce over processes) is
    applied to the stacked new losses at each check, so that every process takes the same decision.
    """

    def __init__(self, lr: float, data: Tensor, factor: float = FACTOR, window: int = WINDOW,
                 reduce: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        if not factor > 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        self.lr, self.factor, self.reduce = lr, float(factor), reduce
        self.scale = data_scale(data)
        self.history: deque[float] = deque(maxlen=int(window))
        self.pending: list[Tensor] = []
        self.first_step = 0

    def record(self, loss: Tensor) -> None:
        """Keep this step's loss (a 0-d tensor, left on its device)."""
        self.pending.append(loss.detach().float().reshape(()))

    def check(self, step: int) -> None:
        """Judge the losses recorded since the last check; ``step`` is the number of steps done."""
        if not self.pending:
            return
        new = torch.stack(self.pending)
        if self.reduce is not None:
            new = self.reduce(new)
        values = new.cpu().tolist()
        self.pending = []
        first = step - len(values) + 1
        for i, loss in enumerate(values):
            at = first + i
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {at}: loss is {loss}. Likely causes: the data scale (training data "
                    f"{self.scale}; losses of data far from order 1 overflow: standardise it) or the learning rate "
                    f"({self.lr:g}: lower it, raise the warm-up or clip gradients)"
                )
            if len(self.history) >= MIN_HISTORY:
                med = sorted(self.history)[len(self.history) // 2]
                if loss > self.factor * med:
                    raise TrainingDiverged(
                        f"training diverged at step {at}: loss {loss:.3g} is {loss / med:.3g} times its running median "
                        f"{med:.3g} (over the previous {len(self.history)} steps; limit {self.factor:g}x). Likely causes: "
                        f"the learning rate ({self.lr:g}: lower it, raise the warm-up or clip gradients) or the data "
                        f"scale (training data {self.scale}; scoredyn's defaults expect data of order 1)"
                    )
            self.history.append(loss)
