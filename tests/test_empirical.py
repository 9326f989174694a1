"""Empirical / temperature-smoothed denoiser against a float64 brute force (DESIGN.md §3, §8)."""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Empirical
from scoredyn.analytic._stream import Partial, augment, chunks, combine, stream_logits


def brute(data: torch.Tensor, x: torch.Tensor, sigma, temperature=1.0, top_k=None) -> torch.Tensor:
    """float64 reference: cdist -> per-row softmax -> weighted mean (optionally on the k nearest)."""
    X = data.reshape(data.shape[0], -1).double()
    q = x.reshape(x.shape[0], -1).double()
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(q.shape[0])
    t = torch.as_tensor(temperature, dtype=torch.float64).expand(q.shape[0])
    r2 = ((q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    logits = -r2 / (2 * s[:, None] ** 2 * t[:, None])
    if top_k is not None:
        keep = r2.topk(top_k, dim=1, largest=False).indices
        mask = torch.full_like(logits, -math.inf).scatter(1, keep, 0.0)
        logits = logits + mask
    return (torch.softmax(logits, 1) @ X).reshape(x.shape)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(300, 5, generator=g, dtype=torch.float64)
    x = torch.cat([data[:4] + 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64),
                   2.0 * torch.randn(6, 5, generator=g, dtype=torch.float64)])
    return data, x


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0])
def test_float32_and_float64_against_brute_force(setup, sigma):
    data, x = setup
    ref = brute(data, x, sigma)
    e64 = rel_err(Empirical(data, chunk_size=37)(x, sigma), ref)
    e32 = rel_err(Empirical(data.float(), chunk_size=37)(x.float(), sigma), ref)
    assert e64 < 1e-12, f"float64 relative error {e64:.2e}"
    assert e32 < 1e-5, f"float32 relative error {e32:.2e} (target 1e-5)"


def test_score_against_brute_force(setup):
    data, x = setup
    sigma = 0.4
    ref = (brute(data, x, sigma) - x) / sigma**2
    err = rel_err(Empirical(data).score(x, sigma), ref)
    assert err < 1e-12, f"score relative error {err:.2e}"


def test_chunked_equals_unchunked_and_combine(setup):
    data, x = setup
    one = Empirical(data, chunk_size=10_000)(x, 0.5)
    for c in (1, 7, 64):
        err = rel_err(Empirical(data, chunk_size=c)(x, 0.5), one)
        assert err < 1e-13, f"chunk_size={c}: relative difference {err:.2e}"
    # two halves reduced separately and combined == one stream
    table = augment(data)
    scale = torch.full((x.shape[0],), 1 / 0.25, dtype=torch.float64)
    parts = [stream_logits(x, scale, chunks(table[sl], 50)) for sl in (slice(0, 120), slice(120, None))]
    p: Partial = combine(*parts)
    err = rel_err(p.wsum / p.sums[:, :1], one)
    assert err < 1e-13, f"combined partial states differ by {err:.2e}"


def test_temperature(setup):
    data, x = setup
    plain = Empirical(data)(x, 0.3)
    assert rel_err(Empirical(data, temperature=1.0)(x, 0.3), plain) < 1e-14
    err = rel_err(Empirical(data, temperature=2.5)(x, 0.3), brute(data, x, 0.3, temperature=2.5))
    assert err < 1e-12, f"T=2.5 relative error {err:.2e}"


def test_callable_temperature_with_batch_sigma(setup):
    data, x = setup
    sigma_c = 0.5
    sig = torch.linspace(0.05, 2.0, x.shape[0], dtype=torch.float64)
    model = Empirical(data, temperature=lambda s: (sigma_c / s).clamp(min=1.0))
    ref = brute(data, x, sig, temperature=(sigma_c / sig).clamp(min=1.0))
    err = rel_err(model(x, sig), ref)
    assert err < 1e-12, f"callable temperature relative error {err:.2e}"


def test_batch_sigma_matches_rowwise(setup):
    data, x = setup
    sig = torch.linspace(0.1, 3.0, x.shape[0], dtype=torch.float64)
    model = Empirical(data)
    out = model(x, sig)
    rows = torch.cat([model(x[i : i + 1], float(sig[i])) for i in range(x.shape[0])])
    assert rel_err(out, rows) < 1e-14


def test_top_k(setup):
    data, x = setup
    plain = Empirical(data)(x, 0.7)
    for k in (data.shape[0], data.shape[0] + 5):
        assert rel_err(Empirical(data, top_k=k)(x, 0.7), plain) < 1e-14, f"top_k={k} differs from the full mixture"
    for k, c in ((1, 13), (5, 13), (40, 64)):
        err = rel_err(Empirical(data, top_k=k, chunk_size=c)(x, 0.7), brute(data, x, 0.7, top_k=k))
        assert err < 1e-12, f"top_k={k}: relative error {err:.2e}"


def test_extreme_sigma_and_far_queries_float32():
    g = torch.Generator().manual_seed(1)
    data = torch.randint(-3, 4, (200, 4), generator=g).float()  # integer lattice: spacing 1, duplicates
    data = torch.cat([data, data[:10]])
    nearest_query = data[:5] + 0.3e-4  # sigma = 1e-4 of the spacing: weights are one-hot
    far = torch.tensor([[1e4, -1e4, 1e4, 0.0], [-3e4, 0.0, 0.0, 0.0]])
    model = Empirical(data, chunk_size=16)
    for x, sigma in ((nearest_query, 1e-4), (far, 1e-4), (far, 1.0), (far, 1e3)):
        out = model(x, sigma)
        assert torch.isfinite(out).all(), f"non-finite output at sigma={sigma}"
        err = rel_err(out, brute(data, x, sigma))
        assert err < 1e-5, f"sigma={sigma}: relative error {err:.2e} vs float64 brute force"
    # a shared (batch-wide) shift would underflow the far query to 0/0; ours returns its nearest point
    both = torch.cat([nearest_query[:1], far[:1]])
    out = model(both, 1.0)
    assert torch.isfinite(out).all() and rel_err(out[1:], brute(data, far[:1], 1.0)) < 1e-5


def test_duplicated_points_weights():
    data = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    # three copies at 0 and one at 1, equidistant: D = 1/4 * 1 in the first coordinate
    out = Empirical(data, chunk_size=1)(x, 0.01)
    assert abs(float(out[0, 0]) - 0.25) < 1e-12, f"duplicates weighted wrongly: {out}"


def test_float64_model_and_image_shapes():
    g = torch.Generator().manual_seed(2)
    data = torch.rand(50, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    out = Empirical(data)(x, 0.3)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert rel_err(out, brute(data, x, 0.3)) < 1e-12
    out32 = Empirical(data.float())(x, 0.3)  # float64 queries follow the model dtype
    assert out32.dtype == torch.float32
    assert Empirical(data)(x[:0], 0.3).shape == (0, 1, 4, 4)


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda d: Empirical(d), lambda m: m(torch.zeros(2, 4), 1.0), "shape"),
        (lambda d: Empirical(d), lambda m: m(torch.zeros(2, 3), 0.0), "> 0"),
        (lambda d: Empirical(d), lambda m: m(torch.zeros(2, 3), -1.0), "> 0"),
        (lambda d: Empirical(d), lambda m: m(torch.full((2, 3), math.nan), 1.0), "NaN"),
        (lambda d: Empirical(d), lambda m: m(torch.zeros(2, 3), torch.ones(3)), "shape"),
        (lambda d: Empirical(d, temperature=lambda s: -s), lambda m: m(torch.zeros(2, 3), 1.0), "temperature"),
        (lambda d: Empirical(d, temperature=lambda s: torch.ones(5)), lambda m: m(torch.zeros(2, 3), 1.0), "temperature"),
        (lambda d: Empirical(d), lambda m: m(torch.zeros(1, 3), 1e-30), "NaN/Inf"),
    ],
)
def test_bad_calls(make, call, match):
    data = torch.randn(10, 3) * 100
    with pytest.raises(ValueError, match=match):
        call(make(data))


@pytest.mark.parametrize(
    "kwargs, data, match",
    [
        ({}, torch.zeros(0, 3), "at least 1"),
        ({}, torch.tensor([[0.0, math.nan]]), "NaN"),
        ({}, torch.zeros(5), "shape"),
        ({}, torch.zeros(5, 3, dtype=torch.long), "floating"),
        ({"temperature": 0.0}, torch.zeros(5, 3), "temperature"),
        ({"temperature": -2.0}, torch.zeros(5, 3), "temperature"),
        ({"temperature": math.inf}, torch.zeros(5, 3), "temperature"),
        ({"temperature": "hot"}, torch.zeros(5, 3), "temperature"),
        ({"chunk_size": 0}, torch.zeros(5, 3), "chunk_size"),
        ({"top_k": 0}, torch.zeros(5, 3), "top_k"),
        ({"top_k": 2.5}, torch.zeros(5, 3), "top_k"),
    ],
)
def test_bad_construction(kwargs, data, match):
    with pytest.raises(ValueError, match=match):
        Empirical(data, **kwargs)


def test_host_array_and_memmap_streamed(tmp_path, setup):
    """numpy arrays / memmaps stay on the host and are streamed chunk by chunk; results equal the tensor path."""
    import numpy as np

    from scoredyn.analytic import NoiseAgnostic

    data, x = setup
    path = tmp_path / "train.npy"
    np.save(path, data.numpy())
    mm = np.load(path, mmap_mode="r")
    for kw in ({}, {"top_k": 7}, {"temperature": 2.0}):
        ref = Empirical(data, **kw)(x, 0.4)
        got = Empirical(mm, chunk_size=23, **kw)(x, 0.4)
        assert got.dtype == torch.float64
        assert rel_err(got, ref) < 1e-13, f"memmap {kw}: {rel_err(got, ref):.2e}"
    f32 = Empirical(np.asarray(data.numpy(), dtype=np.float32), chunk_size=50)
    assert rel_err(f32(x.float(), 0.4), brute(data, x, 0.4)) < 1e-5
    na = NoiseAgnostic(mm, sigma_min=0.05, sigma_max=3.0, chunk_size=31)
    assert rel_err(na.field(x), NoiseAgnostic(data, sigma_min=0.05, sigma_max=3.0).field(x)) < 1e-13
    bad = np.array(data.numpy())
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf in rows"):
        Empirical(bad)
    with pytest.raises(ValueError, match="floating-point"):
        Empirical(np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        Empirical(np.zeros(4))
