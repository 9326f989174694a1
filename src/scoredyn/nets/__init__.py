"""Score networks and their preconditioning (DESIGN.md §2): ``MLP`` for flat data, ``UNet`` for
images, and :func:`precondition` turning a network into a denoiser ``D(x, sigma)``."""

from .mlp import MLP
from .precondition import CONDITIONINGS, EDM, NETS, Multiplicative, Preconditioned, Unconditional, build, precondition
from .unet import UNet

__all__ = ["MLP", "UNet", "precondition", "build", "Preconditioned", "Multiplicative", "Unconditional", "EDM",
           "CONDITIONINGS", "NETS"]
