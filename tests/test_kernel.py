"""The streamed softmax kernel (analytic/_stream.py): exponent floor, block-sparse path, devices.

Oracles: a float64 brute force (cdist -> softmax -> weighted mean) and the dense kernel. Tests that
take ``device`` run on CUDA too when it is available (``pytest -k cuda`` selects them; ``make gpu-check``).
"""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Empirical
from scoredyn.analytic import _stream
from scoredyn.analytic._stream import augment, chunks, log_floor, log_skip, skip_report, stream_logits

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def brute(data: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """float64 reference denoiser ``softmax(-|x - x_i|^2 / (2 sigma^2)) @ X``."""
    X, q = data.double().cpu(), x.double().cpu()
    r2 = (q[:, None, :] - X[None, :, :]).square().sum(-1)  # not cdist: its |x|^2 expansion loses digits far away
    return torch.softmax(-r2 / (2 * sigma**2), 1) @ X


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


def denoise(data: torch.Tensor, x: torch.Tensor, sigma: float, chunk: int, sparse: bool) -> torch.Tensor:
    scale = torch.full((x.shape[0],), 1.0 / sigma**2, dtype=x.dtype, device=x.device)
    p = stream_logits(x, scale, chunks(augment(data), chunk), sparse=sparse)
    return p.wsum / p.sums[:, :1]


@pytest.fixture(scope="module")
def cloud() -> tuple[torch.Tensor, torch.Tensor]:
    """600 points in d = 32 (nearest-neighbour spacing ~6) and queries near points, between them and far away."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(600, 32, generator=g)
    near = data[::37] + 0.01 * torch.randn(17, 32, generator=g)
    between = torch.randn(8, 32, generator=g)
    far = torch.randn(4, 32, generator=g) * 300.0
    return data, torch.cat([near, between, far])


def test_floor_keeps_exp_and_products_normal() -> None:
    for dtype, expect in ((torch.float32, -63.8), (torch.float64, -144.2)):
        fl = log_floor(dtype)
        assert abs(fl - expect) < 0.1, f"{dtype} floor {fl:.2f}, expected about {expect}"
        fi = torch.finfo(dtype)
        w = torch.tensor(fl, dtype=dtype).exp()
        # the weight and its product with any |x| >= tiny^(1/4) are normal numbers (no subnormal slow path)
        assert float(w) >= fi.tiny and float(w * fi.tiny**0.25) >= fi.tiny, f"{dtype}: exp(floor) = {float(w):.3g}"
        # and negligible: below eps^4 relative to the largest weight 1
        assert float(w) <= fi.eps**4 * 1.01
    # the old clamp, float32 log(tiny), rounds to an argument whose exp is subnormal (the slow path)
    old = torch.tensor(math.log(torch.finfo(torch.float32).tiny), dtype=torch.float32).exp()
    assert float(old) < torch.finfo(torch.float32).tiny, "float32 exp(log(tiny)) is no longer subnormal"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.5, 6.0, 60.0])
def test_sparse_and_dense_match_float64_brute_force(cloud, device: str, sigma: float) -> None:
    data, x = (t.to(device) for t in cloud)
    ref = brute(data, x, sigma)
    dense = denoise(data, x, sigma, chunk=64, sparse=False)
    sparse = denoise(data, x, sigma, chunk=64, sparse=True)
    assert torch.isfinite(sparse).all() and torch.isfinite(dense).all()
    # float32 logits carry an absolute error of about eps |x| max|x_i| / sigma^2 (Empirical's docstring):
    # a per-query tolerance from that bound (the far queries, |x| ~ 1700, dominate at middle sigma)
    eps = torch.finfo(torch.float32).eps
    tol = 1e-6 + eps * x.norm(dim=1).cpu().double() * float(data.norm(dim=1).max()) / sigma**2
    for name, out in (("dense", dense), ("sparse", sparse)):
        err = (out.double().cpu() - ref).norm(dim=1) / ref.norm(dim=1)
        worst = int((err / tol).argmax())
        assert bool((err <= tol).all()), f"sigma={sigma} {name}: query {worst} error {float(err[worst]):.2e} > {float(tol[worst]):.2e}"
    diff = rel_err(sparse, dense)
    assert diff < 3e-6, f"sigma={sigma}: sparse vs dense relative difference {diff:.2e} (float32 rounding)"


@pytest.mark.parametrize("sigma", [0.02, 0.3])
def test_sparse_path_skips_and_bounds_the_skipped_mass(cloud, sigma: float) -> None:
    data, x = cloud
    with skip_report() as rep:
        out = denoise(data, x, sigma, chunk=64, sparse=True)
    assert rep.pairs == x.shape[0] * data.shape[0]
    # the memorization regime: a query keeps a few entries of 600 (measured: 99.5% and 88.5% of the pairs
    # skipped; at 0.3 the first chunk, whose running maximum is its own, is multiplied densely)
    assert rep.skipped >= 0.85 * rep.pairs, f"sigma={sigma}: skipped only {rep.skipped} of {rep.pairs} pairs"
    assert rep.dense <= 1, f"sigma={sigma}: {rep.dense} chunks multiplied densely"
    # each point is left out at most once, with a weight below exp(skip) = eps 2^-20 relative to the maximum
    bound = data.shape[0] * math.exp(log_skip(torch.float32))
    assert 0.0 <= rep.mass <= bound, f"skipped mass bound {rep.mass:.3g} above N exp(skip) = {bound:.3g}"
    assert rel_err(out, brute(data, x, sigma)) < 1e-4


def test_skip_report_mass_is_an_upper_bound() -> None:
    """Two clusters; the far cluster's entries are left out; their true float64 mass is below the reported bound."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 8, generator=g, dtype=torch.float64) * 0.1
    # the far chunk sits at distance ~8.5: logit gap ~ 36 / sigma^2, past log_skip (-50) for sigma < 0.85
    b = a + 3.0
    data = torch.cat([a, b])  # the near chunk first: the far one is below the running maximum when seen
    x = a[:4] + 0.01
    sigma = 0.4
    with skip_report() as rep:
        out = denoise(data, x, sigma, chunk=64, sparse=True)
    assert rep.skipped >= 4 * 64, f"expected the far chunk left out for all 4 queries, got {rep}"
    r2 = torch.cdist(x, data).square()
    w = torch.softmax(-r2 / (2 * sigma**2), 1)
    true_mass = float((w[:, 64:].sum(1) / w.sum(1)).max())
    assert 0 < true_mass <= rep.mass, f"reported bound {rep.mass:.3g} below the true skipped mass {true_mass:.3g}"
    assert rep.mass < 1e-25, f"far chunk's mass bound {rep.mass:.3g}"
    assert rel_err(out, brute(data, x, sigma)) < 1e-12


def spiky_logits(width: int, live_blocks: float) -> torch.Tensor:
    """(9, width) logits at -100 with one entry at 0 in a fraction ``live_blocks`` of the 32-column blocks."""
    g = torch.Generator().manual_seed(4)
    logits = torch.full((9, width), -100.0)
    n_blk = width // _stream.LIVE_BLOCK
    for r in range(9):
        blocks = torch.randperm(n_blk, generator=g)[: round(live_blocks * n_blk)]
        logits[r, blocks * _stream.LIVE_BLOCK + torch.randint(_stream.LIVE_BLOCK, (len(blocks),), generator=g)] = 0.0
    return logits


@pytest.mark.parametrize("width,live_blocks", [(640, 0.1), (650, 0.1), (640, 0.7)])
def test_live_entries_match_a_mask(width: int, live_blocks: float) -> None:
    """The block-first search returns exactly ``g >= thr`` in row-major order (650: a tail past the last
    block; 0.7: over half of the blocks live, one comparison over the chunk)."""
    logits = spiky_logits(width, live_blocks)
    logits[:, -5:] = 0.5  # live entries in the tail (and in the last block)
    thr = torch.full((9,), -1.0)
    found = _stream.live_entries(logits, thr, most=logits.numel())
    assert found is not None
    rows, cols, vals = found
    r, c = (logits >= thr[:, None]).nonzero().unbind(1)
    assert torch.equal(rows, r) and torch.equal(cols, c) and torch.equal(vals, logits[r, c])
    assert _stream.live_entries(logits, thr, most=r.numel() - 1) is None


def test_live_entries_give_up_when_dense() -> None:
    """Over 9/10 of the blocks live: dense without counting entries (at least 1/36 of them are live)."""
    assert _stream.live_entries(spiky_logits(640, 0.95), torch.full((9,), -1.0), most=640 * 9) is None
    assert _stream.live_entries(spiky_logits(640, 0.85), torch.full((9,), -1.0), most=640 * 9) is not None


def edge_problem(kind: str, sigma_nn: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MNIST-sized points (d = 784, N = 2048) and 64 held-out queries at ``sigma = sigma_nn`` times the
    median nearest-neighbour distance / sqrt(d), plus 4 queries 50 data radii away."""
    g = torch.Generator().manual_seed(6)
    if kind == "gauss":
        data, x0 = torch.randn(2048, 784, generator=g), torch.randn(60, 784, generator=g)
    else:
        data, x0 = torch.rand(2048, 784, generator=g) * 2 - 1, torch.rand(60, 784, generator=g) * 2 - 1
    sigma = sigma_nn * float(torch.cdist(x0, data).amin(1).median()) / 28.0
    x = torch.cat([x0 + sigma * torch.randn(x0.shape, generator=g), 50.0 * torch.randn(4, 784, generator=g)])
    return data, x, sigma


def brute_rows(data: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`brute` one query at a time (its (B, N, d) difference tensor would take 800 MB here)."""
    return torch.cat([brute(data, q[None], sigma) for q in x])


@pytest.mark.parametrize("kind,sigma_nn,kept", [("gauss", 0.5, 2), ("gauss", 0.75, 5), ("uniform", 0.75, 5), ("gauss", 1.0, 20)])
def test_edge_regime_live_entries_match_float64(kind: str, sigma_nn: float, kept: float) -> None:
    """At the edge of the memorization regime whole chunks are never negligible but single entries are: the
    CSR product over the live entries equals the dense kernel to float32 rounding and the float64 brute force."""
    data, x, sigma = edge_problem(kind, sigma_nn)
    with skip_report() as rep:
        sparse = denoise(data, x, sigma, chunk=256, sparse=True)
    dense = denoise(data, x, sigma, chunk=256, sparse=False)
    n_kept = (rep.pairs - rep.skipped) / x.shape[0]
    # measured: 6.6, 14.2, 17.4 and 35.1 entries kept per query of 2048, no dense chunk; errors against
    # float64 2e-5 to 3e-5 (the dense kernel's too), sparse vs dense 5e-8 to 2.5e-7
    assert kept < n_kept < 0.2 * data.shape[0], f"{kind} sigma={sigma:.3g}: {n_kept:.1f} entries kept per query"
    assert rep.dense <= 1 and rep.mass <= data.shape[0] * math.exp(log_skip(torch.float32))
    ref = brute_rows(data, x, sigma)
    eps = torch.finfo(torch.float32).eps
    tol = 1e-6 + eps * x.norm(dim=1).double() * float(data.norm(dim=1).max()) / sigma**2
    err = (sparse.double() - ref).norm(dim=1) / ref.norm(dim=1)
    assert bool((err <= tol).all()), f"{kind} sigma={sigma:.3g}: error {float(err.max()):.2e} vs float64"
    diff = rel_err(sparse, dense)
    assert diff < 1e-6, f"{kind} sigma={sigma:.3g}: sparse vs dense relative difference {diff:.2e} (float32 rounding)"


def test_edge_regime_float64_and_dense_switch() -> None:
    """float64: the CSR path agrees with the dense kernel to 1e-13; at a large sigma every chunk is dense and
    the result is the dense kernel's, bit for bit."""
    data, x, sigma = edge_problem("gauss", 0.75)
    data, x = data[:1024].double(), x.double()
    sparse = denoise(data, x, sigma, chunk=256, sparse=True)
    assert rel_err(sparse, denoise(data, x, sigma, chunk=256, sparse=False)) < 1e-13
    assert rel_err(sparse, brute_rows(data, x, sigma)) < 1e-11
    with skip_report() as rep:
        wide = denoise(data, x, 4 * sigma, chunk=256, sparse=True)
    assert rep.dense == 4 and rep.skipped == 0, f"expected four dense chunks: {rep}"
    assert torch.equal(wide, denoise(data, x, 4 * sigma, chunk=256, sparse=False))


@pytest.mark.parametrize("device", DEVICES)
def test_empirical_batch_independent_and_on_device(cloud, device: str) -> None:
    """Batch alone vs together (the chunking depends on N only), on every device; float64 oracle."""
    data, x = (t.double().to(device) for t in cloud)
    model = Empirical(data, chunk_size=50)
    for sigma in (0.05, 2.0):
        out = model(x, sigma)
        rows = torch.cat([model(x[i : i + 1], sigma) for i in range(x.shape[0])])
        assert out.device.type == device
        assert rel_err(out, rows) < 1e-13, f"sigma={sigma}: batch vs one-by-one {rel_err(out, rows):.2e}"
        assert rel_err(out, brute(data, x, sigma)) < 1e-11


def test_one_point_and_no_points() -> None:
    data = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([[50.0, -3.0], [1.0, 2.0]])
    for sparse in (True, False):
        assert torch.equal(denoise(data, x, 0.01, chunk=8, sparse=sparse), data.expand(2, 2))
        with pytest.raises(ValueError, match="no training points"):
            stream_logits(x, torch.ones(2), iter(()), sparse=sparse)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_table_all_kernels(device: str) -> None:
    """d = 100: the table is padded to 112 columns; logits, top-k and pair kernels against float64 brute force."""
    from scoredyn.analytic._stream import stream_pairs, table_width

    g = torch.Generator().manual_seed(5)
    data = torch.randn(300, 100, generator=g, dtype=torch.float64).to(device)
    x = (data[:6] + 0.3 * torch.randn(6, 100, generator=g, dtype=torch.float64).to(device))
    assert augment(data).shape == (300, 112) == (300, table_width(100)) and table_width(30) == 32
    assert torch.equal(augment(data)[:, 102:], torch.zeros(300, 10, dtype=torch.float64, device=device))
    for sigma in (0.5, 3.0):
        for sparse in (True, False):
            assert rel_err(denoise(data, x, sigma, chunk=64, sparse=sparse), brute(data, x, sigma)) < 1e-12
    k_near = Empirical(data, top_k=5, chunk_size=64)(x, 3.0)
    r2 = (x.cpu()[:, None] - data.cpu()[None]).square().sum(-1)
    keep = r2.topk(5, dim=1, largest=False).indices
    w = torch.softmax(-r2.gather(1, keep) / 18.0, 1)
    assert rel_err(k_near, torch.einsum("bk,bkd->bd", w, data.cpu()[keep])) < 1e-12
    # a pair kernel with a factor: logits -q / 8, rho = q; sums = [sum w, sum w q]
    p = stream_pairs(x, chunks(augment(data), 64), lambda q: (-q / 8.0, q.clone()))
    wq = torch.softmax(-r2 / 8.0, 1)
    assert rel_err((p.sums[:, 1] / p.sums[:, 0])[:, None], (wq * r2).sum(1, keepdim=True)) < 1e-12
    assert rel_err(p.wsum / p.sums[:, :1], wq @ data.cpu()) < 1e-12


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_forward_mode_autodiff_through_the_default_cpu_path(sigma: float) -> None:
    """A batch of 80 (the sparse default) under ``torch.func.jvp``, ``vmap`` and forward-mode dual tensors
    (which CSR tensors do not support: the product is dense there) against central differences.
    50 tight clusters of 10 points: a query's weights spread over its cluster, the others are left out
    (measured: 97.7% and 85.1% of the pairs skipped; derivatives up to 10.6 and 2.7, tangents within
    2.7e-7 and 2.8e-8 of the central differences). Failed before the fall-back (CSR has no forward AD)."""
    from torch.autograd.forward_ad import dual_level, make_dual, unpack_dual

    g = torch.Generator().manual_seed(10)
    centres = torch.randn(50, 1, 16, generator=g, dtype=torch.float64)
    data = (centres + 0.03 * torch.randn(50, 10, 16, generator=g, dtype=torch.float64)).reshape(500, 16)
    x = centres[torch.arange(80) % 50, 0] + 0.02 * torch.randn(80, 16, generator=g, dtype=torch.float64)
    v = torch.randn(80, 16, generator=g, dtype=torch.float64)
    model = Empirical(data, chunk_size=64)
    with skip_report() as rep:
        model(x, sigma)
    assert rep.skipped > 0.8 * rep.pairs, f"the plain call should take the sparse path: {rep}"
    h = 1e-6
    fd = (model(x + h * v, sigma) - model(x - h * v, sigma)) / (2 * h)
    _, tangent = torch.func.jvp(lambda y: model(y, sigma), (x,), (v,))
    with dual_level():
        dual = unpack_dual(model(make_dual(x, v), sigma)).tangent
    batched = torch.func.vmap(lambda w: torch.func.jvp(lambda y: model(y, sigma), (x,), (w,))[1])(torch.stack([v, -v]))
    scale = float(fd.abs().max())
    assert scale > 0.1, f"sigma={sigma}: derivative too small to test ({scale:.2e})"
    for name, t in (("jvp", tangent), ("dual", dual), ("vmap", batched[0]), ("vmap -v", -batched[1])):
        err = float((t - fd).abs().max())
        assert err <= 1e-6 * max(scale, 1.0), f"sigma={sigma} {name}: tangent vs central difference {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_takes_the_dense_product(dtype: torch.dtype) -> None:
    """torch has no half-precision CSR x dense product on the CPU: ``sparse=True`` gives the dense kernel's result."""
    g = torch.Generator().manual_seed(11)
    data = torch.randn(300, 16, generator=g)
    x = data[:70] + 0.05 * torch.randn(70, 16, generator=g)
    sparse = denoise(data.to(dtype), x.to(dtype), 0.05, chunk=64, sparse=True)
    assert torch.equal(sparse, denoise(data.to(dtype), x.to(dtype), 0.05, chunk=64, sparse=False))
