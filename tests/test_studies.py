"""Tests of the paper studies: the stage cache, the report writer, and each study end to end in its
``tiny`` configuration (report structure, finite numbers, results.json == report.md, cache reuse)."""

from __future__ import annotations

import json
from html import escape as html_escape
import math
import re
import time
from pathlib import Path

import pytest
import torch

from scoredyn.studies import STUDIES, preset, run_studies, with_overrides
from scoredyn.studies.report import VERDICTS, Claim, Figure, Section, StudyReport, Table, fmt, numbers, sig, write_report
from scoredyn.studies.stages import Stages, config_key


# ---------------------------------------------------------------- stage cache


def test_stage_cache_reuses_and_recomputes_on_config_change(tmp_path: Path) -> None:
    calls: list[int] = []

    def work(v: int):
        def fn():
            calls.append(v)
            return {"value": v * 1.5, "pair": (v, v + 1), "t": torch.arange(3.0) * v}
        return fn

    st = Stages(tmp_path, log=lambda s: None)
    first = st.run("s1", {"v": 2}, work(2))
    again = st.run("s1", {"v": 2}, work(2))
    assert calls == [2], f"the stage ran {len(calls)} times; a rerun with the same config must reuse the cache"
    assert first["value"] == again["value"] == 3.0 and first["pair"] == again["pair"] == [2, 3]
    assert torch.equal(first["t"], again["t"])
    assert [r.cached for r in st.records] == [False, True]
    st.run("s1", {"v": 5}, work(5))
    assert calls == [2, 5], "a changed configuration must recompute the stage"
    # a fresh Stages object (a rerun of the program) sees the cache on disk
    st2 = Stages(tmp_path, log=lambda s: None)
    out = st2.run("s1", {"v": 5}, work(5))
    assert calls == [2, 5] and out["value"] == 7.5 and st2.records[0].cached
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind: writes must be atomic"


def test_stage_cache_survives_a_corrupted_or_partial_entry(tmp_path: Path) -> None:
    st = Stages(tmp_path, log=lambda s: None)
    st.run("s", {"a": 1}, lambda: {"t": torch.ones(2), "x": 1})
    (tmp_path / "s.safetensors").write_bytes(b"garbage")
    calls = []
    out = st.run("s", {"a": 1}, lambda: calls.append(1) or {"t": torch.ones(2) * 3, "x": 2})
    assert calls == [1] and out["x"] == 2, "an unreadable cached tensor file must trigger a recompute"
    (tmp_path / "s.json").write_text("{not json")
    out = st.run("s", {"a": 1}, lambda: calls.append(1) or {"t": torch.ones(2), "x": 3})
    assert calls == [1, 1] and out["x"] == 3


def test_stage_artifacts_folder_is_wiped_when_the_key_changes(tmp_path: Path) -> None:
    st = Stages(tmp_path, log=lambda s: None)
    d = st.artifacts("train", {"steps": 10})
    (d / "ckpt.bin").write_bytes(b"x")
    assert (st.artifacts("train", {"steps": 10}) / "ckpt.bin").exists(), "same key: a killed run must be resumable"
    assert not (st.artifacts("train", {"steps": 20}) / "ckpt.bin").exists(), "a new key must not reuse stale artifacts"


def test_stage_config_must_be_jsonable_and_names_plain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON-able"):
        config_key("s", {"f": object()})
    with pytest.raises(ValueError, match="plain file name"):
        Stages(tmp_path, log=lambda s: None).run("../x", {}, lambda: {})


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
    rows = _claim_rows(md)
    n_claims = 0
    for name, st in res["studies"].items():
        assert f"## {st['title']}" in md and html_escape(st["title"]) in html
        claims = [c for s in st["sections"] for c in s["claims"]]
        assert len(claims) >= 3, f"study {name} reports only {len(claims)} claims"
        assert any(s["figures"] for s in st["sections"]), f"study {name} has no figure"
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
            assert c["verdict"] in VERDICTS
            assert c["measured"], f"claim {c['id']} has no measured value"
            assert c["id"] in rows, f"claim {c['id']} has no row in report.md"
            row = rows[c["id"]]
            assert f"**{c['verdict']}**" in row, f"verdict of {c['id']} differs: json {c['verdict']!r}, md {row!r}"
            cells = [x.strip() for x in re.split(r"(?<!\\)\|", row)[1:-1]]
            assert len(cells) == 6, f"claim row of {c['id']} has {len(cells)} cells: {row!r}"
            measured = cells[3]
            for k, v in c["measured"].items():
                assert f"{k} = {fmt(v)}" in measured, f"{c['id']}: {k} = {v!r} (results.json) not in {measured!r}"
                if isinstance(v, float):
                    printed = re.search(r"(?:^|; )" + re.escape(k) + r" = ([-+0-9.e]+)", measured).group(1)
                    assert float(printed) == v, f"{c['id']}: report.md prints {printed}, results.json holds {v!r}"
    assert len(rows) == n_claims, f"report.md has {len(rows)} claim rows, results.json {n_claims} claims"
    return res


@pytest.mark.slow
def test_all_studies_tiny_end_to_end_and_cached_rerun(tmp_path: Path) -> None:
    cfg = with_overrides(preset("tiny"), seed=0)
    t0 = time.perf_counter()
    res = run_studies(list(STUDIES), cfg, tmp_path, progress=False, log=lambda s: None)
    first = time.perf_counter() - t0
    _check_report(tmp_path, list(STUDIES))
    md_first = (tmp_path / "report.md").read_text()
    t0 = time.perf_counter()
    res2 = run_studies(list(STUDIES), cfg, tmp_path, progress=False, log=lambda s: None)
    second = time.perf_counter() - t0
    _check_report(tmp_path, list(STUDIES))
    stages = [s for st in res2["studies"].values() for s in st["stages"]]
    assert stages and all(s["cached"] for s in stages), (
        f"rerun recomputed {[s['name'] for s in stages if not s['cached']]}; every stage should be cached")
    assert second < first, f"cached rerun took {second:.1f} s vs {first:.1f} s for the first run"
    for name in STUDIES:
        a = [c for s in res["studies"][name]["sections"] for c in s["claims"]]
        b = [c for s in res2["studies"][name]["sections"] for c in s["claims"]]
        assert a == b, f"study {name}: the cached rerun reports different claims"
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
