"""Tests of the paper studies: the stage cache, the report writer, and each study end to end in its
``tiny`` configuration (report structure, finite numbers, results.json == report.md, cache reuse)."""

from __future__ import annotations

import importlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from html import escape as html_escape
from pathlib import Path
from typing import Optional

import pytest
import torch

from scoredyn.studies import STUDIES, preset, run_studies, with_overrides
from scoredyn.studies.claims import ClaimSpec, Criterion, Source, above, all_of, at_least, at_most, below, ref
from scoredyn.studies.gate import GateResult, judge_network
from scoredyn.studies.report import VERDICTS, Claim, Figure, Section, StudyReport, Table, fmt, numbers, sig, write_report
from scoredyn.studies.stages import Stages, config_key


# ---------------------------------------------------------------- stage cache


@dataclass
class _Res:
    value: float
    pair: list[int]
    t: torch.Tensor
    nested: dict[str, torch.Tensor] = field(default_factory=dict)
    note: Optional[float] = None


def test_stage_cache_reuses_typed_results_and_recomputes_on_config_or_version_change(tmp_path: Path) -> None:
    calls: list[int] = []

    def work(v: int):
        def fn():
            calls.append(v)
            return _Res(v * 1.5, [v, v + 1], torch.arange(3.0) * v, {"a.b": torch.ones(2) * v})
        return fn

    st = Stages(tmp_path, log=lambda s: None)
    first = st.run("s1", {"v": 2}, work(2), version=1, result_type=_Res)
    again = st.run("s1", {"v": 2}, work(2), version=1, result_type=_Res)
    assert calls == [2], f"the stage ran {len(calls)} times; a rerun with the same config must reuse the cache"
    assert isinstance(again, _Res) and first.value == again.value == 3.0 and first.pair == again.pair == [2, 3]
    assert torch.equal(first.t, again.t) and torch.equal(again.nested["a.b"], torch.ones(2) * 2)
    assert [r.cached for r in st.records] == [False, True]
    st.run("s1", {"v": 5}, work(5), version=1, result_type=_Res)
    assert calls == [2, 5], "a changed configuration must recompute the stage"
    st.run("s1", {"v": 5}, work(5), version=2, result_type=_Res)
    assert calls == [2, 5, 5], "a bumped stage version must recompute the stage"
    st2 = Stages(tmp_path, log=lambda s: None)  # a rerun of the program sees the cache on disk
    out = st2.run("s1", {"v": 5}, work(5), version=2, result_type=_Res)
    assert calls == [2, 5, 5] and out.value == 7.5 and st2.records[0].cached
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind: writes must be atomic"


def test_stage_cache_checksum_mismatch_recomputes_with_a_log_note(tmp_path: Path) -> None:
    notes: list[str] = []
    st = Stages(tmp_path, log=notes.append)
    st.run("s", {"a": 1}, lambda: _Res(1.0, [1], torch.ones(4)), version=1, result_type=_Res)
    # a different but valid tensor file (e.g. a torn rewrite by another run): readable, wrong checksum
    from safetensors.torch import save
    (tmp_path / "s.safetensors").write_bytes(save({"r.t": torch.zeros(4)}))
    calls = []
    out = st.run("s", {"a": 1}, lambda: calls.append(1) or _Res(2.0, [2], torch.ones(4) * 3), version=1, result_type=_Res)
    assert calls == [1] and out.value == 2.0, "a tensor file whose checksum differs must be recomputed"
    assert any("checksum mismatch in s.safetensors" in n for n in notes), f"no log note about the mismatch: {notes}"
    (tmp_path / "s.json").write_text("{not json")
    out = st.run("s", {"a": 1}, lambda: calls.append(1) or _Res(3.0, [3], torch.ones(4)), version=1, result_type=_Res)
    assert calls == [1, 1] and out.value == 3.0


@pytest.mark.parametrize("had_entry", [False, True], ids=["first-run", "rerun-without-cache"])
def test_stage_killed_between_tensors_and_json_is_never_taken_as_cached(tmp_path: Path, monkeypatch, had_entry) -> None:
    from scoredyn.studies import stages as stages_mod

    st = Stages(tmp_path, log=lambda s: None)
    if had_entry:  # a complete entry under the same key, then a --no-cache rerun killed mid-write
        st.run("s", {"a": 1}, lambda: _Res(1.0, [1], torch.ones(4)), version=1, result_type=_Res)
    real = stages_mod.atomic_write_text

    def killed(path, text, *a, **k):
        if str(path).endswith("s.json"):
            raise KeyboardInterrupt("killed after the tensors were written")
        return real(path, text, *a, **k)

    monkeypatch.setattr(stages_mod, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path, log=lambda s: None, reuse=False).run(
            "s", {"a": 1}, lambda: _Res(9.0, [9], torch.ones(4) * 9), version=1, result_type=_Res)
    monkeypatch.setattr(stages_mod, "atomic_write_text", real)
    assert (tmp_path / "s.safetensors").exists(), "the simulated kill should come after the tensor file was written"
    calls = []
    out = Stages(tmp_path, log=lambda s: None).run(
        "s", {"a": 1}, lambda: calls.append(1) or _Res(5.0, [5], torch.ones(4) * 5), version=1, result_type=_Res)
    assert calls == [1] and out.value == 5.0, "a stage killed before its JSON marker must be recomputed"


def test_stage_artifacts_folder_is_wiped_when_the_key_changes(tmp_path: Path) -> None:
    st = Stages(tmp_path, log=lambda s: None)
    d = st.artifacts("train", {"steps": 10})
    (d / "ckpt.bin").write_bytes(b"x")
    assert (st.artifacts("train", {"steps": 10}) / "ckpt.bin").exists(), "same key: a killed run must be resumable"
    assert not (st.artifacts("train", {"steps": 20}) / "ckpt.bin").exists(), "a new key must not reuse stale artifacts"


def test_stage_config_must_be_jsonable_names_plain_and_results_typed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON-able"):
        config_key("s", {"f": object()})
    st = Stages(tmp_path, log=lambda s: None)
    with pytest.raises(ValueError, match="plain file name"):
        st.run("../x", {}, lambda: _Res(1.0, [], torch.ones(1)), version=1, result_type=_Res)
    with pytest.raises(ValueError, match="must be a dataclass"):
        st.run("x", {}, lambda: {"a": 1}, version=1, result_type=dict)
    with pytest.raises(TypeError, match="expected _Res"):
        st.run("x", {}, lambda: {"a": 1}, version=1, result_type=_Res)


# ---------------------------------------------------------------- claims, criteria and the gate


def _crit() -> Criterion:
    return Criterion(at_least("copy", 0.9), not_supported=below("copy", ref("base", offset=-0.2)),
                     inconclusive_if=below("loss_drop", 0), why="the loss did not fall")


def test_criterion_decides_each_verdict_and_writes_its_text() -> None:
    c = _crit()
    assert c.text == ("inconclusive if loss_drop < 0 (the loss did not fall); supported if copy >= 0.9; "
                      "not supported if copy < base - 0.2; otherwise inconclusive")
    assert c.judge({"copy": 0.95, "base": 0.5, "loss_drop": 1}).verdict == "supported"
    out = c.judge({"copy": 0.2, "base": 0.5, "loss_drop": 1})
    assert out.verdict == "not supported" and "copy = 0.2 < 0.3" in out.reason, out
    assert c.judge({"copy": 0.4, "base": 0.5, "loss_drop": 1}).verdict == "inconclusive"
    out = c.judge({"copy": 0.99, "base": 0.5, "loss_drop": -1})
    assert out.verdict == "inconclusive" and "did not fall" in out.reason, "inconclusive_if must win"
    assert c.judge({"copy": float("nan"), "base": 0.5, "loss_drop": 1}).verdict == "inconclusive"
    assert Criterion(at_most("x", 1)).judge({"x": 2}).verdict == "not supported"
    assert Criterion(all_of(at_most("x", 1), above("y", 0))).text == "supported if x <= 1 and y > 0; otherwise not supported"


def _gate(passes: bool) -> GateResult:
    return judge_network("net_a", quality_metric="FID", quality=20.0 if passes else 250.0, quality_floor=22.0,
                         nn_median=2.5, nn_median_heldout=2.6)


def test_claim_on_a_network_that_fails_its_gate_is_inconclusive_with_the_reason() -> None:
    spec = ClaimSpec("x.1", "stmt", Source("P", "§1", "eq. 2"), "paper", ("copy", "base", "loss_drop"), _crit(),
                     on_networks=True)
    good = spec.judge({"copy": 0.95, "base": 0.5, "loss_drop": 1}, networks=[_gate(True)])
    assert good.verdict == "supported" and good.networks == ["net_a"] and good.kind == "paper"
    assert good.reference == "P §1, eq. 2" and good.criterion == spec.criterion.text
    bad = spec.judge({"copy": 0.95, "base": 0.5, "loss_drop": 1}, networks=[_gate(False)])
    assert bad.verdict == "inconclusive", "a claim resting on a failing network must be inconclusive"
    assert bad.reason.startswith("the network does not sample the data: net_a: FID 250 > 2 x floor 22"), bad.reason
    with pytest.raises(ValueError, match="declared but not measured"):
        spec.judge({"copy": 0.95}, networks=[_gate(True)])
    with pytest.raises(ValueError, match="pass their gate results"):
        spec.judge({"copy": 0.95, "base": 0.5, "loss_drop": 1})
    with pytest.raises(ValueError, match="not among its quantities"):
        ClaimSpec("x.2", "s", Source("P", ""), "paper", ("copy",), _crit())
    with pytest.raises(ValueError, match="kind"):
        ClaimSpec("x.3", "s", Source("P", ""), "claim", ("copy", "base", "loss_drop"), _crit())


def test_gate_checks_quality_nearest_neighbours_and_the_loss_gap() -> None:
    assert _gate(True).passes and _gate(True).reason == "passes"
    off = judge_network("n", quality_metric="SW", quality=0.1, quality_floor=0.1, nn_median=9.0, nn_median_heldout=2.0)
    assert not off.passes and "median NN distance 9 > 1.5 x held-out's 2" in off.reason
    worse = judge_network("n", quality_metric="FID", quality=20, quality_floor=22, nn_median=2, nn_median_heldout=2,
                          loss=0.5, loss_optimum=0.1, loss_gaussian=0.4)
    assert not worse.passes and worse.gap_closed == pytest.approx(-1 / 3), "a net worse than the Gaussian fails"
    ok = judge_network("n", quality_metric="FID", quality=20, quality_floor=22, nn_median=2, nn_median_heldout=2,
                       loss=0.3, loss_optimum=0.1, loss_gaussian=0.4)
    assert ok.passes and ok.gap_closed == pytest.approx(1 / 3)


def test_docs_claims_tables_are_generated_from_the_declarations() -> None:
    from scoredyn.studies import docs

    path = Path(__file__).resolve().parents[1] / "docs" / "studies.md"
    text = path.read_text()
    assert docs.render(text) == text, ("docs/studies.md's claims tables differ from the declarations; run "
                                       "python -m scoredyn.studies.docs docs/studies.md")
    for study in docs.STUDIES:
        for c in importlib.import_module(f"scoredyn.studies.{study}").REGISTRY.claims:
            assert c.criterion.text.replace("|", "\\|") in text, f"criterion of {c.id} not verbatim in docs"


def test_weighted_optimum_at_lambda_sigma2_is_kims_optimum() -> None:
    from scoredyn.analytic import NoiseAgnostic
    from scoredyn.studies.kim import _WeightedOptimum

    g = torch.Generator().manual_seed(0)
    X = torch.randn(7, 2, generator=g, dtype=torch.float64)
    x = 1.5 * torch.randn(33, 2, generator=g, dtype=torch.float64)
    ref_f = NoiseAgnostic(X, sigma_min=0.05, sigma_max=4.0, conditioning="multiplicative").field(x)
    f = _WeightedOptimum(X, 0.05, 4.0, 2.0).field(x)  # the study's 400 nodes
    err = float(((f - ref_f).norm(dim=1) / ref_f.norm(dim=1)).max())
    assert err < 1e-4, f"quadrature f*_2 vs NoiseAgnostic(multiplicative): max relative error {err:.2e}"
    # N_m is the potential: f*_m is parallel to grad log N_m with a positive factor
    opt = _WeightedOptimum(X, 0.05, 4.0, 1.0)
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(opt.log_potential(xr).sum(), xr)[0]
    cos = torch.nn.functional.cosine_similarity(grad, opt.field(x), dim=1)
    assert float(cos.min()) > 1 - 1e-9, f"f*_1 not along grad log N_1 (min cosine {float(cos.min())})"


# ---------------------------------------------------------------- report


def test_claim_rejects_bad_verdicts_and_nan_with_a_firm_verdict() -> None:
    with pytest.raises(ValueError, match="verdict"):
        Claim("a", "c", "r", {"v": 1.0}, "crit", "true")
    with pytest.raises(ValueError, match="inconclusive"):
        Claim("a", "c", "r", {"v": float("nan")}, "crit", "supported")
    c = Claim("a", "c", "r", {"v": float("nan")}, "crit", "inconclusive")
    assert c.measured["v"] is None and fmt(None) == "n/a"


def test_sig_and_fmt_roundtrip() -> None:
    for v in (1.234567e-9, 3.0, -2.5e7, 0.1 + 0.2, 123456.0, 7):
        r = sig(v)
        assert float(fmt(r)) == r, f"{v!r} rounded to {r!r} prints as {fmt(r)!r}, which does not parse back"


def test_write_report_files_and_duplicate_figures(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    sec = Section("S", "text", [Claim("x.1", "a | b", "ref", {"m": 0.5}, "m < 1", "supported")],
                  [Table("t", "T", ["a"], [[1.23456]])], [Figure("f1", "cap", png)])
    st = StudyReport("x", "X", "P", "sum", [sec])
    res = write_report(tmp_path, [st], {"mode": "tiny", "seed": 0}, {k: "v" for k in
                       ("python", "torch", "numpy", "scoredyn", "device", "platform")})
    assert (tmp_path / "figures" / "f1.png").read_bytes() == png
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "a | b" in html
    assert json.loads((tmp_path / "results.json").read_text()) == res
    with pytest.raises(ValueError, match="unique"):
        write_report(tmp_path, [st, st], {}, res["versions"])


# ---------------------------------------------------------------- end to end (tiny configurations)


def _claim_rows(md: str) -> dict[str, str]:
    rows = {}
    for line in md.splitlines():
        m = re.match(r"^\| ([a-z]+\.[0-9a-z.]+) \| .* \| \*\*(supported|not supported|inconclusive)\*\* \|$", line)
        if m:
            rows[m.group(1)] = line
    return rows


def _check_report(out: Path, names: list[str]) -> dict:
    res = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert set(res["studies"]) == set(names), f"studies in results.json: {sorted(res['studies'])}"
    for key in ("python", "torch", "numpy", "scoredyn", "device"):
        assert res["versions"].get(key), f"versions lacks {key}: {res['versions']}"
    assert res["config"]["mode"] == "tiny"
    bad = [v for v in numbers(res) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in results.json: {bad[:5]}"
    nets = {g["name"]: g for g in res["networks"]}
    for g in nets.values():
        assert isinstance(g["passes"], bool) and g["quality_metric"] in ("FID", "SW") and g["reason"], g
    rows = _claim_rows(md)
    n_claims = 0
    for name, st in res["studies"].items():
        assert f"## {st['title']}" in md and html_escape(st["title"]) in html
        claims = [c for s in st["sections"] for c in s["claims"]]
        assert len(claims) >= 3, f"study {name} reports only {len(claims)} claims"
        assert any(s["figures"] for s in st["sections"]), f"study {name} has no figure"
        declared = {c.id: c for c in importlib.import_module(f"scoredyn.studies.{name}").REGISTRY.claims}
        for s in st["sections"]:
            assert f"### {s['title']}" in md
            for f in s["figures"]:
                png = (out / f["file"]).read_bytes()
                assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{f['file']} is not a PNG"
            for t in s["tables"].values():
                for r in t["rows"]:
                    line = "| " + " | ".join(fmt(c).replace("|", "\\|") for c in r) + " |"
                    assert line in md, f"table row {r} of {t['title']!r} not printed as {line!r} in report.md"
        for c in claims:
            n_claims += 1
            spec = declared[c["id"]]
            assert c["verdict"] in VERDICTS and c["kind"] == spec.kind and c["criterion"] == spec.criterion.text
            assert bool(c["networks"]) == spec.on_networks, f"{c['id']}: networks {c['networks']}"
            for n in c["networks"]:
                assert n in nets, f"{c['id']} rests on {n}, which results.json's networks do not list"
                if not nets[n]["passes"]:
                    assert c["verdict"] == "inconclusive" and "does not sample the data" in c["reason"], c
            assert set(c["measured"]) == set(spec.quantities), f"{c['id']}: measured {sorted(c['measured'])}"
            assert c["id"] in rows, f"claim {c['id']} has no row in report.md"
            row = rows[c["id"]]
            assert f"**{c['verdict']}**" in row, f"verdict of {c['id']} differs: json {c['verdict']!r}, md {row!r}"
            cells = [x.strip() for x in re.split(r"(?<!\\)\|", row)[1:-1]]
            assert len(cells) == 8, f"claim row of {c['id']} has {len(cells)} cells: {row!r}"
            measured = cells[5]
            for k, v in c["measured"].items():
                assert f"{k} = {fmt(v)}" in measured, f"{c['id']}: {k} = {v!r} (results.json) not in {measured!r}"
                if isinstance(v, float):
                    printed = re.search(r"(?:^|; )" + re.escape(k) + r" = ([-+0-9.e]+)", measured).group(1)
                    assert float(printed) == v, f"{c['id']}: report.md prints {printed}, results.json holds {v!r}"
    assert len(rows) == n_claims, f"report.md has {len(rows)} claim rows, results.json {n_claims} claims"
    return res


def _without_versions(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "versions"}


def test_same_seed_same_report_cold_twice_and_with_a_warm_cache(tmp_path: Path) -> None:
    """Every number in results.json depends on the configuration and seed alone: two cold runs and a warm
    rerun of the tiny smoothing and teleport studies (trained networks, gates, samplers) agree exactly."""
    cfg = with_overrides(preset("tiny"), seed=3)
    names = ["smoothing", "teleport"]
    a = run_studies(names, cfg, tmp_path / "a", progress=False, log=lambda s: None)
    b = run_studies(names, cfg, tmp_path / "b", progress=False, log=lambda s: None)
    warm = run_studies(names, cfg, tmp_path / "a", progress=False, log=lambda s: None)
    timings = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert all(s["cached"] for st in timings.values() for s in st["stages"]), "the rerun should be fully cached"
    assert numbers(a) and a["networks"], "the tiny studies should report numbers and networks"
    assert _without_versions(a) == _without_versions(b), "two cold runs with one seed gave different results.json"
    assert _without_versions(a) == _without_versions(warm), "a warm-cache rerun gave a different results.json"
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    other = run_studies(["teleport"], with_overrides(preset("tiny"), seed=4), tmp_path / "c", progress=False,
                        log=lambda s: None)
    assert numbers(other["studies"]["teleport"]) != numbers(a["studies"]["teleport"]), "the seed changes nothing"


@pytest.mark.slow
def test_all_studies_tiny_end_to_end_and_cached_rerun(tmp_path: Path) -> None:
    cfg = with_overrides(preset("tiny"), seed=0)
    res = run_studies(list(STUDIES), cfg, tmp_path, progress=False, log=lambda s: None)
    _check_report(tmp_path, list(STUDIES))
    md_first = (tmp_path / "report.md").read_text()
    res2 = run_studies(list(STUDIES), cfg, tmp_path, progress=False, log=lambda s: None)
    _check_report(tmp_path, list(STUDIES))
    timings = json.loads((tmp_path / "timings.json").read_text())
    stages = [s for st in timings.values() for s in st["stages"]]
    assert stages and all(s["cached"] for s in stages), (
        f"rerun recomputed {[s['name'] for s in stages if not s['cached']]}; every stage should be cached")
    assert _without_versions(res) == _without_versions(res2), "the cached rerun reports different numbers"
    assert _claim_rows(md_first) == _claim_rows((tmp_path / "report.md").read_text())


def test_cli_rejects_bad_input(tmp_path: Path) -> None:
    from scoredyn.cli import main

    with pytest.raises(SystemExit):
        main(["study", "nonsense", "--out", str(tmp_path)])
    assert main(["study", "kim", "--tiny", "--device", "tpu", "--out", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="unknown study mode"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown data set"):
        with_overrides(preset("tiny"), data="imagenet")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_studies(["kim"], with_overrides(preset("tiny"), device="cuda"), tmp_path, log=lambda s: None)


def test_a_study_folder_has_one_writer(tmp_path: Path) -> None:
    from scoredyn._lock import FolderBusy, lock_folder

    with lock_folder(tmp_path, "study folder"):
        with pytest.raises(FolderBusy):
            run_studies(["teleport"], preset("tiny"), tmp_path, progress=False, log=lambda s: None)
