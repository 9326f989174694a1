"""scoredyn: score-based diffusion models seen as dynamical systems.

Sub-packages: ``analytic`` (exact scores), ``data``, ``sample`` (samplers), ``nets``, ``train``,
``dynamics`` (fixed points, stability), ``metrics`` (memorization, quality), ``studies`` (paper
reproductions), ``plot``. See DESIGN.md for the conventions (VE, denoiser ``D(x, sigma)``).
"""

__version__ = "0.2.0"
