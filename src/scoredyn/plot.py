"""Figures for 2-D dynamics and for samples (matplotlib, Agg; no pyplot global state).

Every function draws on ``ax`` when given (else on a new figure), returns the ``Figure``, and
writes ``path`` (PNG, or any format matplotlib knows from the suffix) atomically when given:
vector fields and streamlines, trajectories, fixed points marked by kind, basins of attraction,
a composite phase portrait, scatter and line plots, and image grids for samples.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from ._io import atomic_write
from ._checks import check_finite
from .dynamics.fixed_points import KINDS, FixedPoints

PathLike = Union[str, os.PathLike]
Lim = tuple[float, float]
Points = Union[Tensor, Mapping[str, Tensor]]

KIND_STYLE: dict[str, dict[str, Any]] = {
    "stable": dict(marker="o", color="#1f77b4", s=70),
    "saddle": dict(marker="X", color="#ff7f0e", s=80),
    "unstable": dict(marker="^", color="#d62728", s=75),
    "degenerate": dict(marker="D", color="#9467bd", s=55),
    "unconverged": dict(marker=".", color="#7f7f7f", s=30),
    "unknown": dict(marker="s", color="#8c564b", s=45),
}
"""Marker per fixed-point kind (see :data:`scoredyn.dynamics.KINDS`)."""


# ---------------------------------------------------------------------------------------- files
def savefig(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG when there is none)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 5.0)) -> tuple[Figure, Any]:
    """A new Agg figure (constrained layout) and its axes (``ax`` or an array of axes), without pyplot;
    ``size`` is the size of one panel in inches."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def _axes(ax: Optional[Axes], size: tuple[float, float] = (5.0, 5.0)) -> Axes:
    return figure(size=size)[1] if ax is None else ax


def _finish(ax: Axes, path: Optional[PathLike], title: Optional[str] = None) -> Figure:
    if title:
        ax.set_title(title)
    fig = ax.figure
    if path is not None:
        savefig(fig, path)
    return fig


def _np(t: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(t, Tensor):
        if t.is_floating_point():
            check_finite(name, t)
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _points_2d(p: Tensor, name: str) -> np.ndarray:
    a = _np(p, name)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected (N, 2) points in the plane")
    return a


def _check_lims(xlim: Lim, ylim: Lim) -> None:
    for name, lim in (("xlim", xlim), ("ylim", ylim)):
        if len(lim) != 2 or not all(math.isfinite(float(v)) for v in lim) or not float(lim[0]) < float(lim[1]):
            raise ValueError(f"{name} must be (low, high) with low < high, got {lim}")


# ---------------------------------------------------------------------------------------- grids
def grid_2d(
    xlim: Lim, ylim: Lim, n: Union[int, tuple[int, int]] = 50, *, device: Any = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Points of a regular grid, ``(ny * nx, 2)``, row-major with y rows (``labels.reshape(ny, nx)``)."""
    _check_lims(xlim, ylim)
    nx, ny = (n, n) if isinstance(n, int) else n
    if nx < 2 or ny < 2:
        raise ValueError(f"grid needs at least 2 points per axis, got n={n}")
    xs = torch.linspace(float(xlim[0]), float(xlim[1]), nx, dtype=dtype, device=device)
    ys = torch.linspace(float(ylim[0]), float(ylim[1]), ny, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _like(field: Any, like: Optional[Tensor]) -> tuple[Any, torch.dtype]:
    if like is not None:
        return like.device, like.dtype
    if isinstance(field, torch.nn.Module):
        for t in (*field.parameters(), *field.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------------------------------- dynamics
def field_2d(
    field: Callable[[Tensor], Tensor],
    xlim: Lim,
    ylim: Lim,
    *,
    n: int = 40,
    style: str = "stream",
    ax: Optional[Axes] = None,
    like: Optional[Tensor] = None,
    cmap: str = "viridis",
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """A 2-D vector field ``(B, 2) -> (B, 2)``: streamlines (``style="stream"``) or unit arrows
    (``"quiver"``), coloured by ``log10 |f|``. Evaluated on an ``n x n`` grid in ``like``'s (or the
    module's) dtype and device."""
    if style not in ("stream", "quiver"):
        raise ValueError(f"style must be 'stream' or 'quiver', got {style!r}")
    device, dtype = _like(field, like)
    pts = grid_2d(xlim, ylim, n, device=device, dtype=dtype)
    with torch.no_grad():
        v = field(pts)
    if not isinstance(v, Tensor) or tuple(v.shape) != tuple(pts.shape):
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"field returned {got} on a grid of shape {tuple(pts.shape)}; expected the same shape")
    vv = v.detach().to("cpu", torch.float64).numpy().reshape(n, n, 2)
    g = pts.detach().to("cpu", torch.float64).numpy().reshape(n, n, 2)
    speed = np.hypot(vv[..., 0], vv[..., 1])
    finite = np.isfinite(speed)
    logspeed = np.log10(np.where(finite & (speed > 0), speed, np.nan))
    ax = _axes(ax)
    if style == "stream":
        u = np.where(finite, vv[..., 0], np.nan)
        w = np.where(finite, vv[..., 1], np.nan)
        ax.streamplot(g[0, :, 0], g[:, 0, 1], u, w, color=logspeed, cmap=cmap, density=1.2, linewidth=0.8, arrowsize=0.9)
    else:
        norm = np.where(finite & (speed > 0), speed, 1.0)
        ax.quiver(g[..., 0], g[..., 1], vv[..., 0] / norm, vv[..., 1] / norm, logspeed, cmap=cmap, pivot="mid")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    return _finish(ax, path, title)


def trajectories_2d(
    traj: Tensor,
    *,
    ax: Optional[Axes] = None,
    color: str = "k",
    alpha: float = 0.6,
    linewidth: float = 1.0,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """Trajectories ``(T, B, 2)`` (from :func:`scoredyn.dynamics.trajectories`): lines, start dots, end crosses."""
    a = _np(traj, "traj")
    if a.ndim != 3 or a.shape[2] != 2:
        raise ValueError(f"traj has shape {tuple(a.shape)}; expected (T, B, 2)")
    ax = _axes(ax)
    ax.plot(a[:, :, 0], a[:, :, 1], color=color, alpha=alpha, linewidth=linewidth)
    ax.scatter(a[0, :, 0], a[0, :, 1], s=10, color=color, alpha=alpha, zorder=3)
    ax.scatter(a[-1, :, 0], a[-1, :, 1], s=25, marker="x", color=color, zorder=3)
    return _finish(ax, path, title)


def fixed_points_2d(
    fp: FixedPoints,
    *,
    ax: Optional[Axes] = None,
    legend: bool = True,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """Fixed points of a 2-D field, one marker per kind (:data:`KIND_STYLE`), with a legend of counts."""
    if not isinstance(fp, FixedPoints):
        raise ValueError(f"fp must be a FixedPoints (from scoredyn.dynamics.fixed_points), got {type(fp).__name__}")
    pts = _points_2d(fp.points.reshape(len(fp), -1), "fixed points")
    ax = _axes(ax)
    kinds = np.array(fp.kind)
    for kind in KINDS:
        sel = kinds == kind
        if sel.any():
            ax.scatter(
                pts[sel, 0], pts[sel, 1], label=f"{kind} ({int(sel.sum())})", edgecolors="k", linewidths=0.7, zorder=5,
                **KIND_STYLE[kind],
            )
    if legend and len(fp):
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _finish(ax, path, title)


def basins_2d(
    labels: Tensor,
    xlim: Lim,
    ylim: Lim,
    *,
    n: Union[int, tuple[int, int], None] = None,
    attractors: Optional[Tensor] = None,
    ax: Optional[Axes] = None,
    alpha: float = 0.45,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """Basin labels on a :func:`grid_2d` grid as a colour image (label ``-1``: white), attractors as stars.

    ``labels``: ``(ny, nx)`` or flat ``(ny * nx,)`` with ``n`` (int or ``(nx, ny)``; a square grid
    when omitted).
    """
    _check_lims(xlim, ylim)
    lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if lab.ndim == 1:
        if n is None:
            side = int(round(math.sqrt(lab.size)))
            if side * side != lab.size:
                raise ValueError(f"{lab.size} labels are not a square grid; pass n=(nx, ny)")
            n = side
        nx, ny = (n, n) if isinstance(n, int) else n
        if nx * ny != lab.size:
            raise ValueError(f"{lab.size} labels do not fill a grid of {nx} x {ny}")
        lab = lab.reshape(ny, nx)
    if lab.ndim != 2:
        raise ValueError(f"labels have shape {tuple(lab.shape)}; expected (ny, nx) or (ny * nx,)")
    k = int(lab.max()) + 1 if lab.size else 0
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f"]
    cmap = ListedColormap(["#ffffff"] + [base[i % len(base)] for i in range(max(k, 1))])
    ax = _axes(ax)
    ax.imshow(
        lab + 1, origin="lower", extent=(xlim[0], xlim[1], ylim[0], ylim[1]), cmap=cmap, vmin=0, vmax=max(k, 1),
        interpolation="nearest", alpha=alpha, aspect="auto",
    )
    if attractors is not None:
        att = _points_2d(attractors.reshape(attractors.shape[0], -1), "attractors")
        ax.scatter(att[:, 0], att[:, 1], marker="*", s=160, color="k", zorder=6, label="attractors")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return _finish(ax, path, title)


def phase_portrait(
    field: Callable[[Tensor], Tensor],
    xlim: Lim,
    ylim: Lim,
    *,
    n: int = 40,
    data: Optional[Tensor] = None,
    trajectories: Optional[Tensor] = None,
    fixed_points: Optional[FixedPoints] = None,
    basins: Optional[tuple[Tensor, int]] = None,
    like: Optional[Tensor] = None,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
    size: tuple[float, float] = (6.0, 6.0),
) -> Figure:
    """One picture of a 2-D flow: basins (``(labels, n_grid)``) under streamlines, data points,
    trajectories and fixed points by kind."""
    ax = _axes(None, size)
    if basins is not None:
        basins_2d(basins[0], xlim, ylim, n=basins[1], ax=ax)
    field_2d(field, xlim, ylim, n=n, ax=ax, like=like)
    if data is not None:
        d = _points_2d(data, "data")
        ax.scatter(d[:, 0], d[:, 1], s=9, color="#e377c2", edgecolors="k", linewidths=0.3, zorder=4, label="data")
    if trajectories is not None:
        trajectories_2d(trajectories, ax=ax, alpha=0.5, linewidth=0.8)
    if fixed_points is not None:
        fixed_points_2d(fixed_points, ax=ax)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return _finish(ax, path, title)


# ---------------------------------------------------------------------------------------- samples
def scatter(
    points: Points,
    *,
    ax: Optional[Axes] = None,
    s: float = 4.0,
    alpha: float = 0.6,
    xlim: Optional[Lim] = None,
    ylim: Optional[Lim] = None,
    equal: bool = True,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """2-D point clouds: one ``(N, 2)`` tensor, or a mapping ``name -> (N, 2)`` drawn in turn with a legend."""
    sets = {"": points} if isinstance(points, Tensor) else dict(points)
    if not sets:
        raise ValueError("points is empty; expected a (N, 2) tensor or a non-empty mapping of them")
    ax = _axes(ax)
    for name, p in sets.items():
        a = _points_2d(p, f"points[{name!r}]" if name else "points")
        ax.scatter(a[:, 0], a[:, 1], s=s, alpha=alpha, label=name or None, linewidths=0)
    if len(sets) > 1 or "" not in sets:
        ax.legend(loc="best", fontsize=8, markerscale=3)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if equal:
        ax.set_aspect("equal")
    return _finish(ax, path, title)


def lines(
    series: Mapping[str, tuple[Sequence[float] | Tensor, Sequence[float] | Tensor]],
    *,
    ax: Optional[Axes] = None,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    marker: str = "o",
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> Figure:
    """Curves ``name -> (x, y)`` on shared axes (e.g. a metric against sigma or NFE)."""
    if not series:
        raise ValueError("series is empty; expected a mapping name -> (x, y)")
    ax = _axes(ax, (6.0, 4.0))
    for name, (x, y) in series.items():
        xa, ya = _np(torch.as_tensor(x), f"x of {name!r}").ravel(), _np(torch.as_tensor(y), f"y of {name!r}").ravel()
        if xa.shape != ya.shape:
            raise ValueError(f"series {name!r} has {xa.size} x values and {ya.size} y values; expected equal lengths")
        ax.plot(xa, ya, marker=marker, markersize=3, label=name)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _finish(ax, path, title)


def image_grid(
    x: Tensor,
    path: Optional[PathLike] = None,
    nrow: int = 8,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    padding: int = 2,
    pad_value: float = 1.0,
    scale: int = 1,
) -> Tensor:
    """Tile images ``(N, C, H, W)`` (``C`` in 1, 3) or ``(N, H, W)`` into one picture, ``nrow`` per row.

    Values are mapped from ``value_range`` to 0..255 (clamped); ``scale`` enlarges pixels (nearest),
    e.g. for 8 x 8 digits. Returns the ``uint8`` grid ``(H', W', C)`` and writes it as a PNG to
    ``path`` atomically when given.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, C, H, W) with C in (1, 3) or (N, H, W), N >= 1")
    if int(nrow) < 1 or int(padding) < 0 or int(scale) < 1:
        raise ValueError(f"nrow and scale must be >= 1 and padding >= 0, got {nrow}, {scale}, {padding}")
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    check_finite("x", x)
    img = ((x.detach().to("cpu", torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    if scale > 1:
        img = img.repeat_interleave(int(scale), dim=2).repeat_interleave(int(scale), dim=3)
    n, c, h, w = img.shape
    ncol = min(int(nrow), n)
    nrows = math.ceil(n / ncol)
    p = int(padding)
    grid = torch.full((c, nrows * (h + p) + p, ncol * (w + p) + p), float(pad_value), dtype=torch.float64)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, p + r * (h + p) : p + r * (h + p) + h, p + q * (w + p) : p + q * (w + p) + w] = img[i]
    out = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    if path is not None:
        from PIL import Image

        arr = out.numpy()
        pic = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
        atomic_write(path, lambda tmp: pic.save(tmp, format="PNG"))
    return out


def samples_picture(samples: Tensor, path: PathLike, title: Optional[str] = None) -> Path:
    """Write samples as a picture: an image grid for ``(N, C, H, W)`` images (enlarged to at least
    about 256 pixels), a scatter plot of the first two coordinates otherwise. Returns the path."""
    if not isinstance(samples, Tensor):
        samples = torch.as_tensor(samples)
    if samples.dim() == 4:
        n, _, h, w = samples.shape
        nrow = math.ceil(math.sqrt(n))
        scale = max(1, 256 // (nrow * max(h, w)))
        image_grid(samples, path, nrow=nrow, scale=scale)
        return Path(path)
    pts = samples.reshape(samples.shape[0], -1)
    if pts.shape[1] == 1:
        pts = torch.cat([pts, torch.zeros_like(pts)], dim=1)
    suffix = " (first two coordinates)" if pts.shape[1] > 2 else ""
    fig = scatter(pts[:, :2], title=title or f"{len(pts)} samples{suffix}")
    savefig(fig, path)
    return Path(path)
