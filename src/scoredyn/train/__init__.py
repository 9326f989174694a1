"""Training score networks with any of the three conditionings (DESIGN.md §2, §7):
:func:`fit` (denoising score matching, AdamW, EMA, checkpoints, resume, DDP; optionally Zhou et al.'s
tempered target, :class:`Tempering`) and :func:`load`."""

from .checkpoint import load
from .config import RESUME_FIELDS, TrainConfig
from .ema import EMA, ema_decay_at
from .fit import fit
from .loss import WEIGHTINGS, denoising_loss, loss_weight
from .sigma_dist import SIGMA_DISTS, SigmaDist
from .tempered import Tempering

__all__ = ["fit", "load", "TrainConfig", "RESUME_FIELDS", "EMA", "ema_decay_at", "denoising_loss", "loss_weight", "WEIGHTINGS", "SigmaDist",
           "SIGMA_DISTS", "Tempering"]
