"""docs/studies.md's claims tables, generated from the studies' declarations (``REGISTRY``).

``python -m scoredyn.studies.docs docs/studies.md`` rewrites the tables between the markers
``<!-- claims:NAME -->`` and ``<!-- /claims:NAME -->`` (and the gate text between
``<!-- gate -->`` and ``<!-- /gate -->``); tests/test_studies.py fails when the file and the
declarations drift apart.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from .claims import ClaimSpec
from .gate import GATE_TEXT

STUDIES = ("kim", "smoothing", "teleport")


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def claims_table(study: str) -> str:
    """The Markdown table of a study's declared claims (criterion text verbatim)."""
    reg = importlib.import_module(f"scoredyn.studies.{study}").REGISTRY
    lines = ["| ID | Kind | Claim | Source | On trained networks | Measured | Criterion |",
             "|---|---|---|---|---|---|---|"]
    for c in reg.claims:
        c: ClaimSpec
        lines.append(f"| {c.id} | {c.kind} | {_cell(c.statement)} | {_cell(str(c.source))} | "
                     f"{'yes' if c.on_networks else 'no'} | {_cell(', '.join(c.quantities))} | {_cell(c.criterion.text)} |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with every generated block replaced by the current declarations."""
    for study in STUDIES:
        pat = re.compile(rf"(<!-- claims:{study} -->\n).*?(<!-- /claims:{study} -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"docs lack the markers <!-- claims:{study} --> ... <!-- /claims:{study} -->")
        text = pat.sub(lambda m: m.group(1) + claims_table(study) + "\n" + m.group(2), text)
    pat = re.compile(r"(<!-- gate -->\n).*?(<!-- /gate -->)", re.S)
    if not pat.search(text):
        raise ValueError("docs lack the markers <!-- gate --> ... <!-- /gate -->")
    return pat.sub(lambda m: m.group(1) + "A network passes when: " + GATE_TEXT + ".\n" + m.group(2), text)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/studies.md")
    path.write_text(render(path.read_text()))
    print(f"rewrote the generated tables in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
