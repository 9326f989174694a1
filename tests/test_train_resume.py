"""Resuming after a real kill continues exactly: N steps in one go == N/2 steps, SIGKILL, resume to N."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scoredyn.nets import MLP, precondition
from scoredyn.train import TrainConfig, fit

N = 40
DATA_EXPR = "torch.randn(64, 2, generator=torch.Generator().manual_seed(5)) * torch.tensor([1.0, 0.5])"
ARGS = dict(steps=N, batch_size=16, lr=2e-3, sigma_dist="loguniform", sigma_min=0.02, sigma_max=3.0, warmup=10,
            ema_decay=0.99, seed=3, ckpt_every=N // 2, log_every=5)

SCRIPT = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    import torch
    from scoredyn.nets import MLP, precondition
    from scoredyn.train import TrainConfig, fit

    torch.set_num_threads(1)
    out = Path(sys.argv[1])

    def hold(step, path):
        if step == {N // 2}:
            (out / "READY").write_text(str(step))
            time.sleep(600)  # the parent SIGKILLs the process here

    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=32, depth=2), "multiplicative")
    fit(model, {DATA_EXPR}, TrainConfig(**{ARGS!r}), out=out, on_checkpoint=hold, progress=False)
    """
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return precondition(MLP(2, hidden=32, depth=2), "multiplicative")


def _data() -> torch.Tensor:
    return eval(DATA_EXPR)


def _fit(out: Path, **kw: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the subprocess
    try:
        model = _model()
        resume, overwrite = bool(kw.pop("resume", True)), bool(kw.pop("overwrite", False))
        ema = fit(model, _data(), TrainConfig(**{**ARGS, **kw}), out=out, resume=resume, overwrite=overwrite,
                  progress=False)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    return model, ema


def test_resume_after_sigkill_is_exact(tmp_path: Path) -> None:
    ref_model, ref_ema = _fit(tmp_path / "ref")

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (run / "READY").exists():
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early:\n{proc.stdout.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint at N/2 within 180 s")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run / "latest").read_text().strip() == f"ckpt/step-{N // 2:09d}"
    half = load_file(str(run / "ckpt" / f"step-{N // 2:09d}" / "model.safetensors"))

    model, ema = _fit(run)
    for name, a, b in [("weights", model, ref_model), ("EMA", ema, ref_ema)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"resumed {name} differ from one-go training by {diff:.3g}"
    moved = max(float((model.state_dict()[k] - half[k]).abs().max()) for k in half)
    assert moved > 1e-4, "the resumed run did not train past N/2"
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, N + 1, 5)), f"metrics log after resume: {steps}"


def test_resume_refuses_changed_arguments_and_can_restart(tmp_path: Path) -> None:
    _fit(tmp_path, steps=10, ckpt_every=5)
    with pytest.raises(ValueError, match="training arguments differ.*batch_size"):
        _fit(tmp_path, steps=20, batch_size=8)
    with pytest.raises(ValueError, match="cannot resume"):
        torch.manual_seed(0)
        fit(precondition(MLP(2, hidden=16, depth=2), "multiplicative"), _data(), TrainConfig(**{**ARGS, "steps": 20}),
            out=tmp_path, progress=False)
    # a finished run resumes as a no-op; resume=False refuses to start over without overwrite
    done_model, done_ema = _fit(tmp_path, steps=10, ckpt_every=5)
    with pytest.raises(ValueError, match="is not empty.*pass overwrite"):
        _fit(tmp_path, steps=10, ckpt_every=5, resume=False)
    with pytest.warns(UserWarning, match="moved the earlier run"):
        fresh_model, fresh_ema = _fit(tmp_path, steps=10, ckpt_every=5, resume=False, overwrite=True)
    x = torch.randn(7, 2)
    assert torch.equal(done_ema(x, 0.5), fresh_ema(x, 0.5))
    # starting over with fewer steps moves the abandoned run aside (nothing is deleted)
    with pytest.warns(UserWarning, match="moved the earlier run"):
        _fit(tmp_path, steps=5, ckpt_every=5, resume=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000000005"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt/step-000000005"
    assert sorted(p.name for p in (tmp_path / "previous-2" / "ckpt").iterdir()) == ["step-000000005", "step-000000010"]
