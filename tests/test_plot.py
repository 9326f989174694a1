"""scoredyn.plot writes readable, non-empty pictures atomically; image_grid places pixels exactly."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from scoredyn import plot
from scoredyn.analytic.mixture import GaussianMixture
from scoredyn.dynamics import basins, fixed_points, trajectories

D64 = torch.float64
XL, YL = (-3.5, 3.5), (-2.5, 2.5)


def _field():
    mu = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=D64)
    gmm = GaussianMixture(torch.tensor([0.5, 0.5], dtype=D64), mu, torch.tensor([0.3, 0.3], dtype=D64))
    return (lambda x: gmm.score(x, 0.2)), gmm


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or tiny"
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.reshape(-1, 3).std(0).max() > 5, "picture is blank"
    return arr


def _no_temp_files(directory: Path) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_phase_portrait_and_parts_write_pngs(tmp_path: Path) -> None:
    field, gmm = _field()
    grid = plot.grid_2d(XL, YL, 30, dtype=D64)
    labels, att = basins(field, grid, tau=5.0, n_steps=60, tol=1e-2)
    fp = fixed_points(field, plot.grid_2d(XL, YL, 5, dtype=D64)).unique(1e-6)
    x0 = 3 * torch.rand(12, 2, generator=torch.Generator().manual_seed(0), dtype=D64) - 1.5
    traj = trajectories(field, x0, tau=2.0, n_steps=40, record=2)
    data = gmm.sample(40, generator=torch.Generator().manual_seed(1))
    out = tmp_path / "figs" / "portrait.png"
    fig = plot.phase_portrait(
        field, XL, YL, n=25, data=data, trajectories=traj, fixed_points=fp, basins=(labels, 30), like=grid,
        path=out, title="two modes",
    )
    assert isinstance(fig, Figure)
    _png(out)
    for name, draw in {
        "stream": lambda p: plot.field_2d(field, XL, YL, like=grid, path=p),
        "quiver": lambda p: plot.field_2d(field, XL, YL, style="quiver", n=15, like=grid, path=p),
        "traj": lambda p: plot.trajectories_2d(traj, path=p),
        "fp": lambda p: plot.fixed_points_2d(fp, path=p),
        "basins": lambda p: plot.basins_2d(labels, XL, YL, attractors=att, path=p),
    }.items():
        assert isinstance(draw(tmp_path / f"{name}.png"), Figure)
        _png(tmp_path / f"{name}.png")
    _no_temp_files(tmp_path)
    _no_temp_files(tmp_path / "figs")


def test_basins_image_colours_each_side(tmp_path: Path) -> None:
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    fig, ax = plot.figure()
    plot.basins_2d(labels.reshape(-1), (0.0, 4.0), (0.0, 4.0), ax=ax)
    img = ax.images[0].get_array()
    assert np.array_equal(np.asarray(img), labels.numpy() + 1)


def test_scatter_lines_and_axes_reuse(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 3
    fig = plot.scatter({"train": a, "samples": b}, path=tmp_path / "sc.png", title="clouds")
    assert len(fig.axes[0].collections) == 2
    _png(tmp_path / "sc.png")
    fig = plot.lines({"ratio": ([1, 2, 4], [1.0, 0.5, 0.25])}, logx=True, logy=True, path=tmp_path / "l.png")
    _png(tmp_path / "l.png")
    fig, axes = plot.figure(1, 2)
    plot.scatter(a, ax=axes[0])
    plot.scatter(b, ax=axes[1], path=tmp_path / "two.png")
    arr = _png(tmp_path / "two.png")
    assert arr.shape[1] > arr.shape[0], "two panels side by side"


def test_image_grid_layout_and_values(tmp_path: Path) -> None:
    x = torch.full((5, 1, 2, 3), -1.0)
    x[1] = 1.0
    x[4, 0, 1, 2] = 0.0
    out = tmp_path / "grid.png"
    grid = plot.image_grid(x, out, nrow=3, padding=1, pad_value=0.5)
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1) and grid.dtype == torch.uint8
    g = grid[:, :, 0]
    assert int(g[0, 0]) == 128  # padding 0.5 -> 127.5 rounds to 128
    assert int(g[1, 1]) == 0 and int(g[1, 5]) == 255  # image 0 (-1) and image 1 (+1) top-left pixels
    assert int(g[4 + 1, 5 + 2]) == 128  # image 4 = row 1, col 1; its pixel (1, 2) held 0 -> 127.5
    with Image.open(out) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), g.numpy())
    rgb = plot.image_grid(torch.rand(3, 3, 4, 4) * 2 - 1, tmp_path / "rgb.png", nrow=2, scale=3)
    assert rgb.shape == (2 * 14 + 2, 2 * 14 + 2, 3)
    with Image.open(tmp_path / "rgb.png") as im:
        assert im.mode == "RGB"
    _no_temp_files(tmp_path)
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o644)


def test_bad_input(tmp_path: Path) -> None:
    field, _ = _field()
    with pytest.raises(ValueError, match="C in"):
        plot.image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        plot.image_grid(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="xlim"):
        plot.field_2d(field, (1.0, -1.0), YL)
    with pytest.raises(ValueError, match="style"):
        plot.field_2d(field, XL, YL, style="arrows")
    with pytest.raises(ValueError, match="same shape"):
        plot.field_2d(lambda x: x[:, :1], XL, YL)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot.scatter(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(T, B, 2\)"):
        plot.trajectories_2d(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="square"):
        plot.basins_2d(torch.zeros(10, dtype=torch.long), XL, YL)
    with pytest.raises(ValueError, match="FixedPoints"):
        plot.fixed_points_2d(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="equal lengths"):
        plot.lines({"a": ([1, 2], [1, 2, 3])})
