"""The 0.2 public API as documented: docs/api.md against the live signatures, and the sigma forms
(float, 0-d, (B,)) accepted by every public method of the analytic models."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from scoredyn import analytic

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ENTRY = re.compile(r"^- `(\w+)\((.*)\)(?: -> .*)?`: ", re.M)


def _annotation(a: Any) -> str:
    text = a if isinstance(a, str) else inspect.formatannotation(a)
    return text.replace("torch.Tensor", "Tensor").replace("typing.", "").replace("'", "")


def documented_form(obj: Callable[..., Any]) -> str:
    """``name(params) -> ret`` as docs/api.md writes it (a class shows its ``__init__`` without ``self``)."""
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params = list(sig.parameters.values())[1 if inspect.isclass(obj) else 0:]
    parts: list[str] = []
    star = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        s = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            s += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            s += f" = {p.default}"
        parts.append(s)
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"{obj.__name__}({', '.join(parts)}){ret}"


def _sections() -> dict[str, str]:
    text = API_MD.read_text()
    return dict(re.findall(r"^## `(scoredyn[\w.]*)`\n(.*?)(?=^## |\Z)", text, re.M | re.S))


def test_every_documented_signature_matches_the_code() -> None:
    wrong = []
    for module, body in _sections().items():
        mod = importlib.import_module(module)
        for line in body.splitlines():
            m = ENTRY.match(line)
            if m is None or line.startswith(f"- `{m.group(1)}(...)`"):
                continue
            obj = getattr(mod, m.group(1), None)
            doc = _annotation(line[3:line.index("`: ")])
            live = "missing" if obj is None else documented_form(obj)
            if live != doc:
                wrong.append(f"{module}: docs say {doc}\n    code has {live}")
    assert not wrong, f"{len(wrong)} docs/api.md line(s) differ from the code:\n" + "\n".join(wrong)


def test_every_exported_name_is_documented() -> None:
    missing = []
    for module, body in _sections().items():
        if module == "scoredyn.studies":  # documented by its CLI line and docs/studies.md
            continue
        names = set(re.findall(r"^- `(\w+)", body, re.M))
        missing += [f"{module}.{n}" for n in getattr(importlib.import_module(module), "__all__", ()) if n not in names]
    assert not missing, f"exported but not in docs/api.md: {missing}"


def _models() -> dict[str, analytic.AnalyticDenoiser]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(20, 3, dtype=torch.float64, generator=g)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3).clone()
    return {
        "Empirical": analytic.Empirical(data),
        "Empirical(T(sigma))": analytic.Empirical(data, temperature=lambda s: 1.0 + s),
        "Empirical(top_k)": analytic.Empirical(data, top_k=4),
        "NoiseAgnostic": analytic.NoiseAgnostic(data, sigma_min=0.05, sigma_max=3.0),
        "NoiseAgnostic(unconditional)": analytic.NoiseAgnostic(data, sigma_min=0.05, sigma_max=3.0, conditioning="unconditional"),
        "Gaussian": analytic.Gaussian.fit(data),
        "GaussianMixture": analytic.GaussianMixture(
            torch.tensor([0.3, 0.7], dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64, generator=g), eye
        ),
    }


SIGMA_FORMS = {
    "float": lambda: 0.3,
    "int": lambda: 1,
    "0-d": lambda: torch.tensor(0.3),
    "(1,)": lambda: torch.tensor([0.3]),
    "(B,)": lambda: torch.full((4,), 0.3, dtype=torch.float32),
}


@pytest.mark.parametrize("form", list(SIGMA_FORMS))
@pytest.mark.parametrize("method", ["denoise", "score", "__call__"])
def test_analytic_methods_take_every_sigma_form(method: str, form: str) -> None:
    """``model.denoise(x, 0.3)`` used to raise a TypeError in ``Empirical.temperatures`` and a bare
    AttributeError in ``NoiseAgnostic``: the public methods take what ``model(x, sigma)`` takes."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = SIGMA_FORMS[form]()
    value = float(sigma) if not isinstance(sigma, torch.Tensor) else float(sigma.reshape(-1)[0])
    for name, model in _models().items():
        ref = getattr(model, method)(x, torch.full((4,), value, dtype=torch.float64))
        out = getattr(model, method)(x, sigma)
        assert out.shape == x.shape and out.dtype == torch.float64, name
        err = float((out - ref).abs().max())
        assert err < 1e-6, f"{name}.{method} with a {form} sigma differs from the (B,) form by {err:.3g}"


def test_denoise_validates_like_the_call() -> None:
    for name, model in _models().items():
        x = torch.randn(2, 3, dtype=torch.float64)
        with pytest.raises(ValueError, match="sigma must be > 0"):
            model.denoise(x, 0.0)
        with pytest.raises(ValueError, match=r"sigma has shape \(3,\); expected a float, a 0-d tensor or shape \(2,\)"):
            model.denoise(x, torch.ones(3))
        with pytest.raises(ValueError, match=r"x has shape \(2, 4\); expected \(B, 3\)"):
            model.denoise(torch.zeros(2, 4, dtype=torch.float64), 0.3)


def test_temperatures_takes_a_float_and_a_batch() -> None:
    m = analytic.Empirical(torch.randn(5, 2, dtype=torch.float64), temperature=lambda s: 1.0 + s)
    assert float(m.temperatures(0.5)) == pytest.approx(1.5)
    assert torch.allclose(m.temperatures(torch.tensor([0.5, 1.0], dtype=torch.float64)), torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert float(analytic.Empirical(torch.randn(5, 2), temperature=2.0).temperatures(0.3)) == 2.0
    with pytest.raises(ValueError, match="sigma must be > 0"):
        m.temperatures(-1.0)


def test_gaussian_methods_take_every_sigma_form() -> None:
    g = _models()["Gaussian"]
    x = torch.randn(4, 3, dtype=torch.float64)
    ref = g.teleport(x, torch.full((4,), 1.0), torch.full((4,), 0.2))
    for s_from, s_to in [(1.0, 0.2), (torch.tensor(1.0), torch.tensor(0.2)), (torch.tensor([1.0]), 0.2)]:
        assert torch.allclose(g.teleport(x, s_from, s_to), ref)
    gm = _models()["GaussianMixture"]
    assert torch.allclose(gm.log_prob(x, 0.3), gm.log_prob(x, torch.full((4,), 0.3)))
    assert gm.sample(3, torch.tensor(0.2)).shape == (3, 3)


def _public_callables() -> list[tuple[str, Callable[..., Any]]]:
    out = []
    for module in _sections():
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                out.append((f"{module}.{name}", obj.__init__))
                out += [(f"{module}.{name}.{k}", v) for k, v in vars(obj).items()
                        if not k.startswith("_") and inspect.isfunction(getattr(v, "__func__", v))]
            elif callable(obj):
                out.append((f"{module}.{name}", obj))
    return out


def test_noise_ranges_are_keyword_only_everywhere() -> None:
    """Issue 10 §1: ``sigma_min=`` and ``sigma_max=`` are keyword-only in every public signature."""
    found, positional = 0, []
    for name, fn in _public_callables():
        params = inspect.signature(getattr(fn, "__func__", fn)).parameters.values()
        for p in params:
            if p.name in ("sigma_min", "sigma_max"):
                found += 1
                if p.kind is not p.KEYWORD_ONLY:
                    positional.append(f"{name}({p.name})")
    assert found >= 10, f"only {found} noise-range parameters found: the scan is not seeing the API"
    assert not positional, f"positional noise ranges: {positional}"


def test_metrics_take_samples_then_reference() -> None:
    """Issue 10 §2: every metric comparing two sets takes ``(samples, reference, ...)``."""
    from scoredyn import metrics

    two_sets = ["energy_distance", "fid", "kid", "memorization", "mmd", "precision_recall", "sliced_wasserstein"]
    for name in two_sets:
        first = list(inspect.signature(getattr(metrics, name)).parameters)[:2]
        assert first == ["samples", "reference"], f"metrics.{name} starts with {first}"
