"""The study report: claims tables, extra tables and figures, written as report.md, report.html and
results.json from ONE dictionary, so every number in the report is the number in the JSON.

Numbers are rounded to 4 significant digits when a claim or table is built; the Markdown and HTML
print them with ``{:.4g}``, which reproduces the stored value exactly.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from .stages import StageRecord, atomic_write_bytes, atomic_write_text

from .claims import VERDICTS
from .gate import GATE_TEXT

_GATE_TEXT_MD = ("Before a network's numbers enter a claim it must sample the data: " + GATE_TEXT + ". A claim that "
                 "rests on a network that fails is inconclusive.")
SIG_DIGITS = 4

Number = Union[int, float, None]
Cell = Union[int, float, str, bool, None]


def sig(v: Any, digits: int = SIG_DIGITS) -> Cell:
    """Round a number to ``digits`` significant digits; NaN/Inf become ``None`` (printed "n/a")."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.integer, int)):
        return int(v)
    v = float(v)
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def fmt(v: Cell) -> str:
    """How a (rounded) value is printed in report.md and report.html."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{SIG_DIGITS}g}"
    return str(v)


@dataclass
class Claim:
    """One row of a claims table, made by :meth:`scoredyn.studies.claims.ClaimSpec.judge`: the claim, where
    it is stated, its kind, the networks it rests on, what was measured, the criterion, the verdict and why."""

    id: str
    claim: str
    reference: str
    measured: dict[str, Cell]
    criterion: str
    verdict: str
    note: str = ""
    kind: str = "paper"
    networks: list[str] = field(default_factory=list)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id}: verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.measured:
            raise ValueError(f"claim {self.id}: needs at least one measured value")
        self.measured = {str(k): sig(v) for k, v in self.measured.items()}
        missing = [k for k, v in self.measured.items() if v is None]
        if missing and self.verdict != "inconclusive":
            raise ValueError(
                f"claim {self.id}: measured value(s) {missing} are missing/non-finite, so the verdict must be "
                f"'inconclusive', got {self.verdict!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "claim": self.claim, "reference": self.reference, "kind": self.kind,
            "networks": list(self.networks), "measured": self.measured, "criterion": self.criterion,
            "verdict": self.verdict, "reason": self.reason, "note": self.note,
        }


@dataclass
class Table:
    """A table of measurements (rows of cells, numbers rounded like the claims)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""

    def __post_init__(self) -> None:
        for i, r in enumerate(self.rows):
            if len(r) != len(self.columns):
                raise ValueError(f"table {self.name}: row {i} has {len(r)} cells; expected {len(self.columns)}")
        self.rows = [[sig(c) for c in r] for r in self.rows]

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "note": self.note}


@dataclass
class Figure:
    """A figure: file name stem, caption and the PNG bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """A part of a study: prose, its claims, tables and figures."""

    title: str
    text: str = ""
    claims: list[Claim] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class StudyReport:
    """Everything one study reports."""

    name: str
    title: str
    papers: str
    summary: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def claims(self) -> list[Claim]:
        return [c for s in self.sections for c in s.claims]


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib ``Figure`` (Agg canvas; no pyplot state involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    tight = "tight" if fig.get_layout_engine() is None else None  # a layout engine already fits the contents
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches=tight)
    return buf.getvalue()


def versions(device: torch.device) -> dict[str, str]:
    """Versions and machine that produced the numbers."""
    import scoredyn

    dev = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scoredyn": getattr(scoredyn, "__version__", "unknown"),
        "device": dev,
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }


def results_dict(studies: Sequence[StudyReport], config: Mapping[str, Any], vers: Mapping[str, str],
                 networks: Sequence[Any] = ()) -> dict[str, Any]:
    """The one dictionary that report.md, report.html and results.json are all generated from.

    ``networks``: the :class:`scoredyn.studies.gate.GateResult` of every trained network.
    """
    nets = []
    for g in networks:
        d = g.as_dict()
        nets.append({k: (sig(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in d.items()})
    out: dict[str, Any] = {"config": dict(config), "versions": dict(vers), "networks": nets, "studies": {}}
    for st in studies:
        out["studies"][st.name] = {
            "title": st.title,
            "papers": st.papers,
            "summary": st.summary,
            "notes": list(st.notes),
            "sections": [
                {
                    "title": s.title,
                    "text": s.text,
                    "claims": [c.as_dict() for c in s.claims],
                    "tables": {t.name: t.as_dict() for t in s.tables},
                    "figures": [{"name": f.name, "caption": f.caption, "file": f"figures/{f.name}.png"} for f in s.figures],
                }
                for s in st.sections
            ],
        }
    return out


def timings_dict(studies: Sequence[StudyReport]) -> dict[str, Any]:
    """Wall and CPU seconds per study and per stage (timings.json; kept out of results.json, whose numbers
    depend on the seed alone)."""
    return {
        st.name: {
            "wall_s": sig(st.wall_s), "cpu_s": sig(st.cpu_s),
            "stages": [{"name": r.name, "key": r.key, "seconds": sig(r.seconds), "cached": r.cached} for r in st.stages],
        }
        for st in studies
    }


def _measured_text(measured: Mapping[str, Cell]) -> str:
    return "; ".join(f"{k} = {fmt(v)}" for k, v in measured.items())


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _verdict_counts(study: Mapping[str, Any]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for s in study["sections"]:
        for c in s["claims"]:
            counts[c["verdict"]] += 1
    return counts


def render_markdown(res: Mapping[str, Any], timings: Mapping[str, Any], title: str = "scoredyn study report") -> str:
    """report.md from the results dictionary and the timings."""
    L: list[str] = [f"# {title}", ""]
    v = res["versions"]
    L.append(
        f"Made with scoredyn {v['scoredyn']}, torch {v['torch']}, numpy {v['numpy']}, Python {v['python']} "
        f"on {v['device']} ({v['platform']}). Mode: {res['config'].get('mode', '?')}, seed {res['config'].get('seed', '?')}."
    )
    L += ["", "## Summary", "", "| Study | Claims | supported | not supported | inconclusive | Wall time (s) |", "|---|---|---|---|---|---|"]
    for name, st in res["studies"].items():
        c = _verdict_counts(st)
        L.append(f"| {name} | {sum(c.values())} | {c['supported']} | {c['not supported']} | {c['inconclusive']} | "
                 f"{fmt(timings.get(name, {}).get('wall_s'))} |")
    if res.get("networks"):
        L += ["", "## Trained networks and their quality gate", "", _GATE_TEXT_MD, "",
              "| Network | Quality | Floor | NN median | held-out NN median | Loss | Optimum | Gaussian | Gap closed | Passes | Reason |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in res["networks"]:
            L.append(f"| {g['name']} | {g['quality_metric']} {fmt(g['quality'])} | {fmt(g['quality_floor'])} | "
                     f"{fmt(g['nn_median'])} | {fmt(g['nn_median_heldout'])} | {fmt(g['loss'])} | {fmt(g['loss_optimum'])} | "
                     f"{fmt(g['loss_gaussian'])} | {fmt(g['gap_closed'])} | {fmt(g['passes'])} | {_md_escape(g['reason'])} |")
    for name, st in res["studies"].items():
        L += ["", f"## {st['title']}", "", f"*Papers:* {st['papers']}", "", st["summary"], ""]
        for s in st["sections"]:
            L += [f"### {s['title']}", ""]
            if s["text"]:
                L += [s["text"], ""]
            if s["claims"]:
                L += ["| ID | Kind | Claim | Reference | Networks | Measured | Criterion | Verdict |",
                      "|---|---|---|---|---|---|---|---|"]
                for c in s["claims"]:
                    verdict = f"**{c['verdict']}**"
                    L.append(
                        f"| {c['id']} | {c['kind']} | {_md_escape(c['claim'])} | {_md_escape(c['reference'])} | "
                        f"{_md_escape(', '.join(c['networks']) or '(analytic)')} | "
                        f"{_md_escape(_measured_text(c['measured']))} | {_md_escape(c['criterion'])} | {verdict} |"
                    )
                L.append("")
                L += [f"- {c['id']} ({c['verdict']}): {_md_escape(c['reason'])}" + (f" — {c['note']}" if c["note"] else "")
                      for c in s["claims"]]
                L.append("")
            for tname, t in s["tables"].items():
                L += [f"**{t['title']}**", ""]
                L.append("| " + " | ".join(_md_escape(c) for c in t["columns"]) + " |")
                L.append("|" + "---|" * len(t["columns"]))
                for r in t["rows"]:
                    L.append("| " + " | ".join(_md_escape(fmt(c)) for c in r) + " |")
                if t["note"]:
                    L += ["", t["note"]]
                L.append("")
            for f in s["figures"]:
                L += [f"![{f['caption']}]({f['file']})", "", f"*{f['caption']}*", ""]
        if st["notes"]:
            L += ["**Notes.**", ""] + [f"- {n}" for n in st["notes"]] + [""]
        L += ["**Stage timings.**", "", "| Stage | Seconds | Cached |", "|---|---|---|"]
        for r in timings.get(name, {}).get("stages", []):
            L.append(f"| {r['name']} | {fmt(r['seconds'])} | {fmt(r['cached'])} |")
        L.append("")
    return "\n".join(L) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}
.supported{background:#d9f2d9;font-weight:bold}
.not-supported{background:#f7d4d4;font-weight:bold}
.inconclusive{background:#f7efcc;font-weight:bold}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-style:italic;font-size:0.9em}
"""


def render_html(res: Mapping[str, Any], figures: Mapping[str, bytes], timings: Mapping[str, Any],
                title: str = "scoredyn study report") -> str:
    """A self-contained report.html (figures embedded as base64 PNG) from the results dictionary."""
    e = html.escape
    H: list[str] = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
    ]
    v = res["versions"]
    H.append(
        f"<p>Made with scoredyn {e(v['scoredyn'])}, torch {e(v['torch'])}, numpy {e(v['numpy'])}, Python "
        f"{e(v['python'])} on {e(v['device'])} ({e(v['platform'])}). Mode: {e(str(res['config'].get('mode', '?')))}, "
        f"seed {e(str(res['config'].get('seed', '?')))}.</p>"
    )
    H.append("<h2>Summary</h2><table><tr><th>Study</th><th>Claims</th><th>supported</th><th>not supported</th>"
             "<th>inconclusive</th><th>Wall time (s)</th></tr>")
    for name, st in res["studies"].items():
        c = _verdict_counts(st)
        H.append(f"<tr><td>{e(name)}</td><td>{sum(c.values())}</td><td>{c['supported']}</td><td>{c['not supported']}</td>"
                 f"<td>{c['inconclusive']}</td><td>{e(fmt(timings.get(name, {}).get('wall_s')))}</td></tr>")
    H.append("</table>")
    if res.get("networks"):
        H.append(f"<h2>Trained networks and their quality gate</h2><p>{e(_GATE_TEXT_MD)}</p><table><tr><th>Network</th>"
                 "<th>Quality</th><th>Floor</th><th>NN median</th><th>held-out NN median</th><th>Loss</th><th>Optimum</th>"
                 "<th>Gaussian</th><th>Gap closed</th><th>Passes</th><th>Reason</th></tr>")
        for g in res["networks"]:
            cls = "supported" if g["passes"] else "not-supported"
            H.append(f"<tr><td>{e(g['name'])}</td><td>{e(g['quality_metric'])} {e(fmt(g['quality']))}</td>"
                     f"<td>{e(fmt(g['quality_floor']))}</td><td>{e(fmt(g['nn_median']))}</td>"
                     f"<td>{e(fmt(g['nn_median_heldout']))}</td><td>{e(fmt(g['loss']))}</td><td>{e(fmt(g['loss_optimum']))}</td>"
                     f"<td>{e(fmt(g['loss_gaussian']))}</td><td>{e(fmt(g['gap_closed']))}</td>"
                     f"<td class='{cls}'>{e(fmt(g['passes']))}</td><td>{e(g['reason'])}</td></tr>")
        H.append("</table>")
    for name, st in res["studies"].items():
        H.append(f"<h2>{e(st['title'])}</h2><p><i>Papers:</i> {e(st['papers'])}</p><p>{e(st['summary'])}</p>")
        for s in st["sections"]:
            H.append(f"<h3>{e(s['title'])}</h3>")
            if s["text"]:
                H.append(f"<p>{e(s['text'])}</p>")
            if s["claims"]:
                H.append("<table><tr><th>ID</th><th>Kind</th><th>Claim</th><th>Reference</th><th>Networks</th><th>Measured</th>"
                         "<th>Criterion</th><th>Verdict</th><th>Why</th></tr>")
                for c in s["claims"]:
                    cls = c["verdict"].replace(" ", "-")
                    H.append(
                        f"<tr><td>{e(c['id'])}</td><td>{e(c['kind'])}</td><td>{e(c['claim'])}</td><td>{e(c['reference'])}</td>"
                        f"<td>{e(', '.join(c['networks']) or '(analytic)')}</td>"
                        f"<td>{e(_measured_text(c['measured']))}</td><td>{e(c['criterion'])}</td>"
                        f"<td class='{cls}'>{e(c['verdict'])}</td><td>{e(c['reason'])}"
                        + (f" — {e(c['note'])}" if c["note"] else "") + "</td></tr>"
                    )
                H.append("</table>")
            for tname, t in s["tables"].items():
                H.append(f"<p><b>{e(t['title'])}</b></p><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in t["columns"]) + "</tr>")
                for r in t["rows"]:
                    H.append("<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in r) + "</tr>")
                H.append("</table>")
                if t["note"]:
                    H.append(f"<p>{e(t['note'])}</p>")
            for f in s["figures"]:
                png = figures[f["name"]]
                b64 = base64.b64encode(png).decode("ascii")
                H.append(f"<figure><img alt='{e(f['caption'])}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{e(f['caption'])}</figcaption></figure>")
        if st["notes"]:
            H.append("<p><b>Notes.</b></p><ul>" + "".join(f"<li>{e(n)}</li>" for n in st["notes"]) + "</ul>")
        H.append("<p><b>Stage timings.</b></p><table><tr><th>Stage</th><th>Seconds</th><th>Cached</th></tr>")
        for r in timings.get(name, {}).get("stages", []):
            H.append(f"<tr><td>{e(r['name'])}</td><td>{e(fmt(r['seconds']))}</td><td>{e(fmt(r['cached']))}</td></tr>")
        H.append("</table>")
    H.append("</body></html>")
    return "\n".join(H) + "\n"


def write_report(
    out: Path, studies: Sequence[StudyReport], config: Mapping[str, Any], vers: Mapping[str, str],
    networks: Sequence[Any] = (),
    title: str = "scoredyn study report",
) -> dict[str, Any]:
    """Write figures/*.png, report.md, report.html, results.json and timings.json under ``out``; return the
    results dict (every number in it depends on the configuration and seed only)."""
    out = Path(out)
    figures: dict[str, bytes] = {}
    for st in studies:
        for s in st.sections:
            for f in s.figures:
                if f.name in figures:
                    raise ValueError(f"two figures are named {f.name!r}; figure names must be unique")
                figures[f.name] = f.png
    res = results_dict(studies, config, vers, networks)
    timings = timings_dict(studies)
    for name, png in figures.items():
        atomic_write_bytes(out / "figures" / f"{name}.png", png)
    atomic_write_text(out / "results.json", json.dumps(res, indent=1, allow_nan=False))
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=1, allow_nan=False))
    atomic_write_text(out / "report.md", render_markdown(res, timings, title))
    atomic_write_text(out / "report.html", render_html(res, figures, timings, title))
    return res


def numbers(res: Any) -> list[float]:
    """Every number in a results dictionary (for checks that all are finite)."""
    found: list[float] = []
    if isinstance(res, Mapping):
        for v in res.values():
            found += numbers(v)
    elif isinstance(res, (list, tuple)):
        for v in res:
            found += numbers(v)
    elif isinstance(res, (int, float)) and not isinstance(res, bool):
        found.append(float(res))
    return found


