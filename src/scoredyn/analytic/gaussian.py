"""Gaussian denoiser and analytical teleportation (Wang & Vastola 2023, DESIGN.md §3)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import SigmaLike, as_sigma, check_data
from .mixture import GaussianMixture


class Gaussian(GaussianMixture):
    """The data modelled as ``N(mu, Sigma)``, ``Sigma = U diag(lam) U^T`` (rank ``r <= d``).

    ``D(x, sigma) = mu + U diag(lam / (lam + sigma^2)) U^T (x - mu)`` (Wang & Vastola 2023, Eq. 4);
    a rank-deficient ``Sigma`` maps the orthogonal complement onto ``mu``. It is the one-component
    case of :class:`GaussianMixture`, plus the closed-form probability-flow solution :meth:`teleport`.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        mean = torch.as_tensor(mean)
        super().__init__(torch.ones(1, dtype=mean.dtype, device=mean.device), mean[None], torch.as_tensor(cov)[None])

    @classmethod
    def fit(cls, data: Tensor, rank: Optional[int] = None) -> "Gaussian":  # type: ignore[override]
        """Sample mean and covariance of ``data`` (computed in float64), keeping the top ``rank`` eigenpairs."""
        data = check_data("data", data, min_points=2)
        n, d = data.shape[0], data[0].numel()
        if rank is not None and not 1 <= int(rank) <= d:
            raise ValueError(f"rank must be in [1, {d}] (the data dimension), got {rank}")
        flat = data.reshape(n, d).double()
        mu = flat.mean(0)
        cov = (flat - mu).T @ (flat - mu) / (n - 1)
        lam, u = torch.linalg.eigh(cov)
        lam = lam.clamp_min(0)
        if rank is not None:
            lam, u = lam[d - int(rank) :], u[:, d - int(rank) :]
        to = dict(dtype=data.dtype, device=data.device)
        return cls.from_eig(
            torch.ones(1, **to), mu.to(**to).reshape(1, *data.shape[1:]), u[None].to(**to), lam[None].to(**to),
            torch.zeros(1, **to),
        )

    @property
    def mean(self) -> Tensor:
        """The mean, shaped like one data point."""
        return self.means[0].reshape(self.data_shape)

    @property
    def eigvals(self) -> Tensor:
        """Covariance eigenvalues ``(r,)`` (ascending)."""
        return self.lam[0] + self.iso[0]

    @property
    def eigvecs(self) -> Tensor:
        """Orthonormal eigenvectors ``(d, r)``."""
        if self.basis is None:
            return torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return self.basis[0]

    def teleport(self, x: Tensor, sigma_from: SigmaLike, sigma_to: SigmaLike) -> Tensor:
        """Closed-form probability-flow ODE solution from ``sigma_from`` to ``sigma_to`` (either direction).

        ``x(sigma) = mu + U diag(sqrt((sigma^2 + lam) / (sigma_T^2 + lam))) U^T (x_T - mu)
        + (sigma / sigma_T) (I - U U^T)(x_T - mu)`` (Wang & Vastola 2023, Eq. 7; DESIGN.md §3); when
        the model has an isotropic variance ``v`` outside ``U`` that factor is ``sqrt((sigma^2 + v) / (sigma_T^2 + v))``.
        Exact when the data are this Gaussian; ``sigma_to = 0`` gives the ODE's end point.
        """
        x, s_from = self.prepare(x, sigma_from)
        s_to = as_sigma(sigma_to, x.shape[0], x, name="sigma_to", allow_zero=True)
        y = x.reshape(x.shape[0], -1) - self.means[0]
        lam = self.eigvals
        iso = self.iso[0]  # variance of the directions outside U (0 for a fitted rank-r model)
        ratio = ((s_to**2 + iso) / (s_from**2 + iso)).sqrt()[:, None]
        u = self.eigvecs
        proj = y @ u
        coef = ((s_to[:, None] ** 2 + lam) / (s_from[:, None] ** 2 + lam)).sqrt()
        out = self.means[0] + ratio * y + (proj * (coef - ratio)) @ u.T
        return out.reshape(x.shape)
