"""Dynamics of score fields (DESIGN.md §4): Jacobians, fixed points and their stability,
trajectories of ``dx/dtau = f(x)``, the Lyapunov function of Kim's optimum along them, basins."""

from .fixed_points import KINDS, FixedPoints, classify, fixed_points
from .flow import basins, lyapunov_trace, trajectories
from .jacobian import jacobian, jvp

__all__ = [
    "KINDS",
    "FixedPoints",
    "basins",
    "classify",
    "fixed_points",
    "jacobian",
    "jvp",
    "lyapunov_trace",
    "trajectories",
]
