"""scripts/gpu_check.py without a GPU: the no-CUDA exit, the stage plumbing and one real stage on the CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_without_cuda_it_says_so_and_exits_0(gpu_check, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu_section.md").exists()


def test_cpu_needs_dry_and_unknown_stages_are_refused(gpu_check, tmp_path) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--dry", "--only", "nonesuch", "--out", str(tmp_path)])


def test_every_stage_runs_and_a_failure_is_reported(gpu_check, tmp_path) -> None:
    """A fake runner: one stage fails, the rest still run, the section lists all, the exit status is 1."""
    seen = []

    def runner(stage, env, log, left):
        seen.append(stage.name)
        assert left > 0 and str(ROOT / "src") in env["PYTHONPATH"]
        stage.status, stage.seconds = ("FAILED (exit 1)", 1.0) if stage.name == "train" else ("ok", 2.0)
        stage.output = f"```\n{stage.name} table\n```"

    assert gpu_check.main(["--device", "cpu", "--dry", "--out", str(tmp_path)], runner=runner) == 1
    names = [s.name for s in gpu_check.stages("cuda", False, tmp_path)]
    assert seen == names and {"tests", "analytic", "analytic-tf32", "sampler", "train", "study"} <= set(names)
    text = (tmp_path / "gpu_section.md").read_text()
    assert "| train | UNet training, bf16 vs float32 | FAILED (exit 1) | 1 |" in text
    assert "### study" in text and "study table" in text
    assert text.count("```") == 2 * len(names), "stage outputs' own code fences must not nest"
    # the real GPU stages ask for CUDA tests, TF32 both ways, and float64 errors
    full = {s.name: s.argv for s in gpu_check.stages("cuda", False, tmp_path)}
    assert "cuda" in full["tests"] and "--tf32" in full["analytic-tf32"] and "--tf32" not in full["analytic"]
    assert all("--accuracy" in full[k] for k in ("analytic", "analytic-tf32", "analytic-b2048"))
    assert sum(s.timeout_s for s in gpu_check.stages("cuda", False, tmp_path)) <= gpu_check.BUDGET_S


def test_sampler_stage_runs_on_cpu(gpu_check, tmp_path) -> None:
    """The real sampler stage, dry, on the CPU: it runs, and its table row reports identical samples."""
    assert gpu_check.main(["--device", "cpu", "--dry", "--only", "sampler", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_section.md").read_text()
    assert "| sampler |" in text and "| ok |" in text and "cpu vs cpu samples 0.00e+00" in text, text
