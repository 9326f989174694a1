"""The expansion factor gamma_ex of Zhou et al. 2026 §3.2 against its closed form for two points."""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Empirical, NoiseAgnostic
from scoredyn.metrics import expansion_factor

D64 = torch.float64


def closed_form(delta, d, sigma, ratio, h):
    a = math.exp((ratio**2 - 1) * d / 2)
    gap = (ratio**2 - 1) * d * sigma**2 / delta
    return abs((1 - h) + h * (1 - 2 / (a + 1)) * delta / gap)


@pytest.mark.parametrize("d,ratio,h", [(16, 1.05, 1.0), (64, 1.02, 0.5), (3, 1.3, 1.0)])
def test_empirical_two_points_matches_closed_form(d, ratio, h):
    g = torch.Generator().manual_seed(d)
    data = torch.randn(2, d, generator=g, dtype=D64)
    delta = float((data[0] - data[1]).norm())
    lo = delta / ((ratio + 1) * math.sqrt(d))
    sig = [lo * f for f in (1.05, 1.5, 3.0, 6.0)]
    res = expansion_factor(Empirical(data), data, sig, ratio=ratio, step=h, pair=(0, 1))
    for s, got in zip(sig, res.gamma):
        ref = closed_form(delta, d, s, ratio, h)
        assert abs(got - ref) <= 1e-9 * ref, f"gamma_ex {got:.6g} vs closed form {ref:.6g} at sigma*={s:.3g}"
    assert res.gamma[0] > res.gamma[-1]  # grows as sigma* shrinks
    assert res.as_dict()["pair"] == [0, 1]


def test_default_pair_is_the_closest_and_any_denoiser_works():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(30, 32, generator=g, dtype=D64)
    res_e = expansion_factor(Empirical(data), data, [0.5, 0.8, 1.5])
    na = NoiseAgnostic(data, conditioning="unconditional", levels=torch.exp(torch.linspace(math.log(5), math.log(0.01), 40)))
    res_u = expansion_factor(na, data, [0.5, 0.8, 1.5])
    i0, i1 = res_e.pair
    dist = torch.cdist(data, data) + torch.eye(30, dtype=D64) * 1e9
    assert abs(float(dist.min()) - res_e.pair_distance) < 1e-12 and float(dist[i0, i1]) == float(dist.min())
    assert res_u.pair == res_e.pair and all(math.isfinite(v) and v >= 0 for v in res_u.gamma)


def test_bad_inputs():
    data = torch.randn(4, 8, dtype=D64)
    with pytest.raises(ValueError, match="expected sigma"):
        expansion_factor(Empirical(data), data, [1e-6], pair=(0, 1))
    with pytest.raises(ValueError, match="ratio"):
        expansion_factor(Empirical(data), data, [1.0], ratio=0.5)
    with pytest.raises(ValueError, match="identical"):
        expansion_factor(Empirical(data), torch.cat([data[:1], data[:1]]), [1.0], pair=(0, 1))
