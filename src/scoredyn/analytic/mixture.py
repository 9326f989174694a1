"""Gaussian-mixture denoiser: the exact score of a mixture at every noise level (DESIGN.md §3).

Every component is stored in eigen form ``Sigma_c = U_c diag(lam_c) U_c^T + iso_c I`` (``U_c`` with
orthonormal columns, or the identity when ``U`` is ``None``), so ``Sigma_c + sigma^2 I`` is
diagonal in the same basis at every sigma: full, diagonal, isotropic and low-rank-plus-isotropic
covariances share one implementation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._checks import SigmaLike, bcast, check_data, check_finite
from .base import AnalyticDenoiser


class GaussianMixture(AnalyticDenoiser):
    """Exact denoiser of ``p = sum_c w_c N(mu_c, Sigma_c)`` convolved with ``N(0, sigma^2 I)``.

    ``D(x, sigma) = sum_c w_c(x, sigma) [x - sigma^2 (Sigma_c + sigma^2 I)^{-1} (x - mu_c)]`` with
    posterior weights ``w_c`` from ``log w_c + log N(x; mu_c, Sigma_c + sigma^2 I)`` (Tweedie's formula
    per component). ``covs`` is ``(K, d, d)`` (full), ``(K, d)`` (diagonal) or ``(K,)`` (isotropic
    variances); ``means`` is ``(K, *data_shape)``.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        super().__init__()
        means = check_data("means", torch.as_tensor(means))
        k = means.shape[0]
        d = means[0].numel()
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        covs = check_finite("covs", torch.as_tensor(covs, dtype=means.dtype, device=means.device))
        if covs.shape == (k,):
            if bool((covs <= 0).any()):
                raise ValueError(f"isotropic variances must be > 0, got min {float(covs.min()):.3g}")
            basis, lam, iso = means.new_zeros(k, d, 0), means.new_zeros(k, 0), covs
        elif covs.shape == (k, d):
            if bool((covs <= 0).any()):
                raise ValueError(f"diagonal variances must be > 0, got min {float(covs.min()):.3g}")
            basis, lam, iso = None, covs, means.new_zeros(k)
        elif covs.shape == (k, d, d):
            if not torch.allclose(covs, covs.transpose(1, 2), rtol=1e-5, atol=1e-8 * float(covs.abs().max())):
                raise ValueError("covs must be symmetric (K, d, d) matrices")
            lam, basis = torch.linalg.eigh(covs)
            scale = lam.abs().amax(dim=1, keepdim=True)
            if bool((lam < -1e-6 * scale).any()):
                raise ValueError(
                    f"covs must be positive semi-definite; smallest eigenvalue {float(lam.min()):.3g}"
                )
            lam = lam.clamp_min(0)
            iso = means.new_zeros(k)
        else:
            raise ValueError(
                f"covs has shape {tuple(covs.shape)}; expected ({k}, {d}, {d}) full, ({k}, {d}) diagonal "
                f"or ({k},) isotropic for {k} components of dimension {d}"
            )
        self._init_eig(weights, means, basis, lam, iso)

    @classmethod
    def from_eig(
        cls, weights: Tensor, means: Tensor, basis: Optional[Tensor], lam: Tensor, iso: Tensor
    ) -> "GaussianMixture":
        """Build from eigen form ``Sigma_c = U_c diag(lam_c) U_c^T + iso_c I`` (``U_c``: ``(K, d, r)``
        with orthonormal columns, or ``None`` for the identity basis with ``lam`` of shape ``(K, d)``)."""
        obj = cls.__new__(cls)
        AnalyticDenoiser.__init__(obj)
        means = check_data("means", torch.as_tensor(means))
        obj._init_eig(weights, means, basis, lam, iso)
        return obj

    def _init_eig(self, weights: Tensor, means: Tensor, basis: Optional[Tensor], lam: Tensor, iso: Tensor) -> None:
        k = means.shape[0]
        d = means[0].numel()
        weights = check_finite("weights", torch.as_tensor(weights, dtype=means.dtype, device=means.device))
        if weights.shape != (k,):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({k},) to match the means")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        lam = check_finite("eigenvalues", lam.to(means))
        iso = check_finite("isotropic variance", torch.as_tensor(iso).to(means).reshape(k))
        if bool((lam < 0).any()) or bool((iso < 0).any()):
            raise ValueError("covariance eigenvalues and isotropic variances must be >= 0")
        r = d if basis is None else basis.shape[2]
        if basis is not None and basis.shape[:2] != (k, d):
            raise ValueError(f"basis has shape {tuple(basis.shape)}; expected ({k}, {d}, r)")
        if lam.shape != (k, r):
            raise ValueError(f"eigenvalues have shape {tuple(lam.shape)}; expected ({k}, {r})")
        self.data_shape = tuple(means.shape[1:])
        self.dim = d
        self.rank = r
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("means", means.reshape(k, d))
        self.register_buffer("lam", lam)
        self.register_buffer("iso", iso)
        self.basis: Optional[Tensor]
        self.register_buffer("basis", None if basis is None else basis.to(means))

    # ------------------------------------------------------------------ construction from data
    @classmethod
    def fit(
        cls,
        data: Tensor,
        n_components: int,
        seed: int = 0,
        ridge: float = 1e-3,
        rank: Optional[int] = None,
    ) -> "GaussianMixture":
        """k-means (scikit-learn, ``random_state=seed``), then each cluster's covariance plus a ridge.

        ``ridge`` is relative to the data's mean per-coordinate variance. With ``rank`` the cluster
        covariances are low-rank plus isotropic (probabilistic PCA: top ``rank`` eigenpairs, the mean
        of the rest as the isotropic part), which keeps ``d x rank`` numbers per component.
        """
        from sklearn.cluster import KMeans

        data = check_data("data", data, min_points=2)
        if not 1 <= int(n_components) <= data.shape[0]:
            raise ValueError(f"n_components must be in [1, {data.shape[0]}] (the number of points), got {n_components}")
        n, d = data.shape[0], data[0].numel()
        flat64 = data.reshape(n, d).double().cpu()
        km = KMeans(n_clusters=int(n_components), n_init=4, random_state=int(seed)).fit(flat64.numpy())
        labels = torch.as_tensor(km.labels_)
        base = float(flat64.var(dim=0).mean()) * float(ridge)
        base = base if base > 0 else float(ridge)
        ws, mus, us, lams, isos = [], [], [], [], []
        for c in range(int(n_components)):
            xc = flat64[labels == c]
            mu = xc.mean(dim=0)
            cov = (xc - mu).T @ (xc - mu) / max(xc.shape[0] - 1, 1)
            e, u = torch.linalg.eigh(cov)
            e = e.clamp_min(0)
            if rank is not None and rank < d:
                rest = e[: d - rank].mean()
                e, u = e[d - rank :] - rest, u[:, d - rank :]
                iso = rest + base
            else:
                iso = torch.tensor(base, dtype=torch.float64)
            ws.append(xc.shape[0] / n)
            mus.append(mu)
            us.append(u)
            lams.append(e)
            isos.append(iso)
        dt, dev = data.dtype, data.device
        to = lambda t: t.to(dtype=dt, device=dev)  # noqa: E731
        return cls.from_eig(
            to(torch.tensor(ws, dtype=torch.float64)),
            to(torch.stack(mus)).reshape(int(n_components), *data.shape[1:]),
            to(torch.stack(us)),
            to(torch.stack(lams)),
            to(torch.stack([torch.as_tensor(i) for i in isos])),
        )

    # ------------------------------------------------------------------ the mathematics
    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def covariance(self) -> Tensor:
        """Dense ``(K, d, d)`` covariances (for inspection and tests; not used internally)."""
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        if self.basis is None:
            low = torch.diag_embed(self.lam)
        else:
            low = self.basis @ torch.diag_embed(self.lam) @ self.basis.transpose(1, 2)
        return low + self.iso[:, None, None] * eye

    def min_variance(self) -> Tensor:
        """Smallest eigenvalue of each ``Sigma_c``, ``(K,)``."""
        if self.rank == self.dim:
            return self.iso + self.lam.amin(-1)
        return self.iso.clone()

    def _components(self, xf: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Per component: log N(x; mu_c, Sigma_c + s^2 I) ``(B, K)`` and (Sigma_c + s^2 I)^{-1}(x - mu_c) ``(B, K, d)``."""
        y = xf[:, None, :] - self.means[None]  # (B, K, d)
        v = self.iso[None, :] + (s * s)[:, None]  # (B, K)
        ev = self.lam[None] + v[:, :, None]  # (B, K, r)
        if self.basis is None:
            proj = y
            resid_sq = torch.zeros_like(v)
            prec_y = y / ev
            n_iso = 0
        else:
            proj = torch.einsum("bkd,kdr->bkr", y, self.basis)
            back = torch.einsum("bkr,kdr->bkd", proj, self.basis)
            resid = y - back
            resid_sq = (resid * resid).sum(-1)
            prec_y = torch.einsum("bkr,kdr->bkd", proj / ev, self.basis) + resid / v[:, :, None]
            n_iso = self.dim - self.rank
        quad = (proj * proj / ev).sum(-1) + (resid_sq / v if n_iso else 0.0)
        logdet = ev.log().sum(-1) + (n_iso * v.log() if n_iso else 0.0)
        logn = -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return logn, prec_y

    def log_prob(self, x: Tensor, sigma: SigmaLike = 0.0) -> Tensor:
        """``log p_sigma(x)`` of the mixture convolved with ``N(0, sigma^2 I)``, shape ``(B,)``."""
        x, s = self.prepare(x, sigma, allow_zero=True)
        if bool((s == 0).any()) and bool((self.min_variance() <= 0).any()):
            raise ValueError("log_prob at sigma = 0 needs non-singular covariances; use sigma > 0")
        logn, _ = self._components(x.reshape(x.shape[0], -1), s)
        return torch.logsumexp(logn + self.log_weights, dim=1)

    def _posterior(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        logn, prec_y = self._components(x.reshape(x.shape[0], -1), s)
        w = torch.softmax(logn + self.log_weights, dim=1)
        return w, prec_y

    def score(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """``grad log p_sigma(x) = -sum_c w_c(x) (Sigma_c + sigma^2 I)^{-1} (x - mu_c)`` (exact, no cancellation)."""
        x, s = self.prepare(x, sigma)
        w, prec_y = self._posterior(x, s)
        return -(w[:, :, None] * prec_y).sum(1).reshape(x.shape)

    def denoise(self, x: Tensor, s: Tensor) -> Tensor:
        w, prec_y = self._posterior(x, s)
        return x - bcast(s * s, x) * (w[:, :, None] * prec_y).sum(1).reshape(x.shape)

    def sample(self, n: int, sigma: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` draws from ``p_sigma`` (the mixture plus ``N(0, sigma^2 I)``), shape ``(n, *data_shape)``.

        Draws are made on the CPU generator ``generator`` and moved to the model's device, so a seed
        gives the same samples on every device.
        """
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        sigma = float(sigma)
        if not sigma >= 0 or math.isinf(sigma):
            raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
        n = int(n)
        g = generator
        comp = torch.multinomial(self.weights.double().cpu(), n, replacement=True, generator=g)
        z_low = torch.randn(n, self.rank, generator=g, dtype=torch.float64)
        z_iso = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        dev, dt = self.means.device, self.means.dtype
        comp, z_low, z_iso = comp.to(dev), z_low.to(dev, dt), z_iso.to(dev, dt)
        low = z_low * self.lam[comp].sqrt()
        if self.basis is None:
            x = self.means[comp] + low
        else:
            x = self.means[comp] + torch.einsum("nr,ndr->nd", low, self.basis[comp])
        x = x + z_iso * (self.iso[comp] + sigma**2).sqrt()[:, None]
        return x.reshape(n, *self.data_shape)
