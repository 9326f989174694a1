"""The README tour and the Python blocks of docs/*.md run as written (issue 10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    """The fenced ```python blocks of a markdown file."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


BLOCKS = [(p, i, code) for p in DOCS for i, code in enumerate(python_blocks(p))]


def test_the_readme_has_a_python_tour() -> None:
    assert python_blocks(ROOT / "README.md"), "README.md has no ```python block to run"


@pytest.mark.parametrize("path, index, code", BLOCKS, ids=[f"{p.name}#{i}" for p, i, _ in BLOCKS])
def test_python_block_runs(path: Path, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    if "SCOREDYN_MODEL" in code:  # "Bring your own model": a saved random tiny diffusers UNet and images
        from _tiny_unet import readme_model

        readme_model(tmp_path, monkeypatch)
    exec(compile(code, f"{path.name} block {index}", "exec"), {"__name__": "__readme__"})
