"""Networks and preconditioning: shapes, sigma-blindness of the noise-agnostic conditionings, EDM's
Table 1 coefficients against float64 closed forms, score = (D - x)/sigma^2, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoredyn.nets import MLP, NETS, UNet, build, precondition

D64 = torch.float64


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (also the zero-initialised output layers) random values, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class Spy(nn.Module):
    """A network that records its inputs and returns a fixed nonlinear function of them."""

    def __init__(self, cond: bool) -> None:
        super().__init__()
        self.cond = cond
        self.w = nn.Parameter(torch.tensor(0.7, dtype=D64))
        self.calls: list[tuple[torch.Tensor, object]] = []

    def forward(self, x: torch.Tensor, noise_emb: object = None) -> torch.Tensor:
        self.calls.append((x.clone(), None if noise_emb is None else noise_emb.clone()))  # type: ignore[union-attr]
        out = torch.sin(self.w * x)
        if noise_emb is not None:
            out = out + noise_emb.reshape(-1, *([1] * (x.dim() - 1)))  # type: ignore[union-attr]
        return out


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("cond", [False, True])
def test_unet_shapes(shape: tuple[int, ...], cond: bool) -> None:
    net = UNet(shape[0], base=16, channel_mult=(1, 2), num_blocks=1, cond=cond)
    x = torch.randn(3, *shape)
    out = net(x, torch.zeros(3) if cond else None)
    assert out.shape == x.shape


def test_unet_pads_sizes_the_levels_do_not_divide() -> None:
    """28x28 with four levels (factor 8) is padded to 32 and cropped; the border pixels depend on the input."""
    net = _randomise(UNet(1, base=8, channel_mult=(1, 1, 2, 2), num_blocks=1)).double()
    x = torch.randn(2, 1, 28, 28, dtype=D64, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 1, 28, 28)
    out[:, :, -1, -1].sum().backward()
    assert float(x.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_mlp_flattens_and_restores_shape() -> None:
    net = _randomise(MLP(64, hidden=32, depth=2))
    x = torch.randn(5, 1, 8, 8)
    assert net(x).shape == x.shape
    assert torch.allclose(net(x).reshape(5, 64), net(x.reshape(5, 64)))


@pytest.mark.parametrize("conditioning,power", [("multiplicative", 1), ("unconditional", 2)])
@pytest.mark.parametrize("kind", ["mlp", "unet"])
@torch.no_grad()
def test_sigma_blind_conditionings_never_see_sigma(conditioning: str, power: int, kind: str) -> None:
    net = MLP(4, hidden=16, depth=2) if kind == "mlp" else UNet(1, base=8, channel_mult=(1, 2), num_blocks=1)
    model = precondition(_randomise(net).double(), conditioning)
    x = torch.randn(6, 4, dtype=D64) if kind == "mlp" else torch.randn(6, 1, 8, 8, dtype=D64)
    fields = []
    for sigma in (0.01, 0.3, 7.0, torch.linspace(0.1, 5.0, 6, dtype=D64)):
        s = torch.as_tensor(sigma, dtype=D64).expand(6).reshape(6, *([1] * (x.dim() - 1)))
        fields.append((model(x, sigma) - x) / s**power)
    f = model.field(x)
    assert float(f.abs().max()) > 1e-3, "randomised network gives a trivial field"
    for g in fields:
        err = float((g - f).abs().max())  # rounding: eps |x| / sigma^power <= 1e-11 here
        assert err < 1e-9, f"{conditioning}: (D - x)/sigma^{power} changes with sigma (max diff {err:.3g})"
    assert not any(isinstance(m, nn.Linear) and m.in_features != m.out_features and "emb" in n
                   for n, m in net.named_modules()), "a sigma-blind net has an embedding path"
    assert not any("emb" in n for n, _ in net.named_parameters())


def test_sigma_blind_wrapper_passes_no_noise_input() -> None:
    spy = Spy(cond=False)
    model = precondition(spy, "multiplicative")
    x = torch.randn(4, 3, dtype=D64)
    model(x, 0.5)
    model.score(x, torch.rand(4, dtype=D64) + 0.1)
    assert spy.calls and all(emb is None for _, emb in spy.calls)
    assert all(torch.equal(inp, x) for inp, _ in spy.calls), "c_in must be 1 for a sigma-blind conditioning"


@torch.no_grad()
def test_edm_coefficients_match_table_1() -> None:
    """Karras et al. 2022 Table 1, float64 closed forms: D = c_skip x + c_out F(c_in x, log(sigma)/4)."""
    sd = 0.5
    spy = Spy(cond=True)
    model = precondition(spy, "edm", sigma_data=sd)
    x = torch.randn(5, 3, dtype=D64)
    sigma = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=D64)
    d = model(x, sigma)
    inp, emb = spy.calls[-1]
    s = sigma[:, None]
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / torch.sqrt(s**2 + sd**2)
    c_in = 1 / torch.sqrt(sd**2 + s**2)
    assert torch.allclose(inp, c_in * x, rtol=1e-14, atol=0)
    assert torch.allclose(emb, torch.log(sigma) / 4, rtol=1e-14, atol=0)  # type: ignore[arg-type]
    expected = c_skip * x + c_out * (torch.sin(0.7 * c_in * x) + (torch.log(sigma) / 4)[:, None])
    err = float((d - expected).abs().max())
    assert err < 1e-14, f"EDM denoiser differs from Table 1 by {err:.3g}"
    # the denoiser tends to the identity as sigma -> 0
    assert float((model(x, 1e-8) - x).abs().max()) < 1e-7


@pytest.mark.parametrize("conditioning", ["multiplicative", "unconditional", "edm"])
@torch.no_grad()
def test_score_is_denoiser_residual_over_sigma_squared(conditioning: str) -> None:
    net = _randomise(MLP(3, hidden=16, depth=2, cond=conditioning == "edm")).double()
    model = precondition(net, conditioning)
    x = torch.randn(7, 3, dtype=D64)
    sigma = torch.logspace(-2, 1, 7, dtype=D64)
    expected = (model(x, sigma) - x) / sigma[:, None] ** 2
    got = model.score(x, sigma)
    err = float(((got - expected).abs() / expected.abs().clamp_min(1e-12)).max())
    assert err < 1e-9, f"score differs from (D - x)/sigma^2 by {err:.3g} (relative)"
    assert model.conditioning == conditioning
    assert hasattr(model, "field") == (conditioning != "edm")


def test_sigma_forms_agree() -> None:
    model = precondition(_randomise(MLP(2, hidden=8, depth=2, cond=True)), "edm")
    x = torch.randn(4, 2)
    ref = model(x, torch.full((4,), 0.7))
    for sigma in (0.7, torch.tensor(0.7), torch.tensor([0.7])):
        assert torch.equal(model(x, sigma), ref)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="multiplicative, unconditional, edm"):
        precondition(MLP(2), "ncsn")
    with pytest.raises(ValueError, match="cond=False"):
        precondition(MLP(2, cond=True), "multiplicative")
    with pytest.raises(ValueError, match="cond=True"):
        precondition(MLP(2), "edm")
    with pytest.raises(ValueError, match="no noise input"):
        MLP(2)(torch.randn(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="needs noise_emb"):
        UNet(1, cond=True)(torch.randn(1, 1, 8, 8))
    model = precondition(MLP(2), "multiplicative")
    for sigma in (-1.0, 0.0, float("nan"), torch.ones(3)):
        with pytest.raises(ValueError, match="sigma"):
            model(torch.randn(2, 2), sigma)
    with pytest.raises(ValueError, match="dim=2"):
        model(torch.randn(2, 3), 1.0)
    with pytest.raises(ValueError, match="sigma_data"):
        precondition(MLP(2), "multiplicative", sigma_data=-1.0)
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(1, channel_mult=(1, 2), attn_levels=(2,))


def test_build_round_trip_and_allow_list() -> None:
    torch.manual_seed(0)
    model = precondition(UNet(1, base=8, channel_mult=(1, 2), num_blocks=1, cond=True), "edm", sigma_data=0.4)
    spec = model.spec()
    again = build(spec)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(again(x, 0.3), model(x, 0.3))
    assert again.sigma_data == 0.4 and again.conditioning == "edm"
    assert set(NETS) == {"MLP", "UNet"}
    with pytest.raises(ValueError, match="unknown network class"):
        build({**spec, "net": "os.system"})
    with pytest.raises(ValueError, match="bad net_kwargs"):
        build({**spec, "net_kwargs": {"channels": 1, "colour": 3}})
    # cond follows the conditioning when the spec leaves it out
    assert build({"net": "MLP", "net_kwargs": {"dim": 2}, "conditioning": "edm"}).net.cond is True
    with pytest.raises(ValueError, match="allowed network classes"):
        precondition(Spy(cond=False), "multiplicative").spec()


def test_unet_is_small() -> None:
    """The default MNIST-size UNet stays small enough for CPU training."""
    n = sum(p.numel() for p in UNet(1).parameters())
    assert 2e5 < n < 3e6, f"default UNet has {n} parameters"
    with torch.no_grad():
        assert math.isfinite(float(UNet(1)(torch.randn(2, 1, 28, 28)).sum()))


@torch.no_grad()
def test_float64_queries_on_a_float32_net() -> None:
    """Samplers may pass float64 states: the net runs in its own dtype and D comes back in x's dtype."""
    model = precondition(_randomise(MLP(2, hidden=8, depth=2)), "multiplicative")
    x = torch.randn(4, 2, dtype=D64)
    d = model(x, 0.3)
    assert d.dtype == D64 and model.field(x).dtype == D64
    assert torch.allclose(d, (model(x.float(), 0.3)).double(), atol=1e-6)
