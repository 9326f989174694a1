"""Fault injection for training checkpoints: a real SIGKILL at several points of a tiny run, then resume.

Each kill point runs in its own process, which SIGKILLs itself at that point (deterministic, unlike a
timed kill): between checkpoints, in the middle of a step, half-way through writing a checkpoint's
tensors, after the checkpoint is complete but before its rename, after the rename but before
``latest`` is updated, and in the middle of replacing ``latest``. Resuming must give bit-exactly
the weights and EMA of an uninterrupted run, the metrics log of one, and leave no stray file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from scoredyn.nets import MLP, precondition
from scoredyn.train import TrainConfig, fit

N = 12
DATA_EXPR = "torch.randn(48, 2, generator=torch.Generator().manual_seed(5)) * torch.tensor([1.0, 0.5])"
ARGS = dict(steps=N, batch_size=16, lr=2e-3, sigma_dist="loguniform", sigma_min=0.02, sigma_max=3.0, warmup=3,
            ema_decay=0.99, seed=3, ckpt_every=4, log_every=2)

SCRIPT = textwrap.dedent(
    f"""
    import os, signal, sys
    from pathlib import Path
    import torch
    import scoredyn._io as io
    import scoredyn.train.checkpoint as ck
    import scoredyn.train.fit
    fit_mod = sys.modules["scoredyn.train.fit"]  # the package re-exports the function under the same name
    from scoredyn.nets import MLP, precondition
    from scoredyn.train import TrainConfig

    torch.set_num_threads(1)
    out, mode, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    state = {{"step": 0, "tensors": 0}}

    def on_checkpoint(step, path):
        if mode == "after-checkpoint" and step == at:
            die()

    loss = fit_mod.denoising_loss
    def counting_loss(*a, **k):
        state["step"] += 1
        if mode == "mid-step" and state["step"] == at:
            die()
        return loss(*a, **k)
    fit_mod.denoising_loss = counting_loss

    save = ck._save_tensors
    def save_tensors(tensors, path):
        save(tensors, path)
        state["tensors"] += 1
        if mode == "mid-tensors" and state["step"] == at and state["tensors"] % 4 == 2:
            die()
    ck._save_tensors = save_tensors

    replace = ck.os.replace
    class OsProxy:
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            if mode == "before-rename" and state["step"] == at:
                die()
            replace(src, dst)
    ck.os = OsProxy()

    write_text = ck.atomic_write_text
    def atomic_write_text(path, text, fsync=True):
        if state["step"] == at and mode == "before-latest":
            die()
        if state["step"] == at and mode == "mid-latest":
            with io.atomic_path(path) as tmp:
                tmp.write_text(text)
                die()
        return write_text(path, text, fsync)
    ck.atomic_write_text = atomic_write_text

    torch.manual_seed(0)
    model = precondition(MLP(2, hidden=16, depth=2), "multiplicative")
    fit_mod.fit(model, {DATA_EXPR}, TrainConfig(**{ARGS!r}), out=out, on_checkpoint=on_checkpoint, progress=False)
    """
)

# (kill point, step at which it fires, the checkpoint the resumed run must start from)
KILLS = [("after-checkpoint", 4, 4), ("mid-step", 7, 4), ("mid-tensors", 8, 4), ("before-rename", 8, 4),
         ("before-latest", 8, 8), ("mid-latest", 4, 4)]


def _fit(out: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the subprocesses
    try:
        torch.manual_seed(0)
        model = precondition(MLP(2, hidden=16, depth=2), "multiplicative")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "latest names ...; resuming from the newest valid"
            ema = fit(model, eval(DATA_EXPR), TrainConfig(**ARGS), out=out, progress=False)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    return model, ema


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run per kill point, all started at once (each kills itself); returns their folders."""
    root = tmp_path_factory.mktemp("faults")
    (root / "script.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = {}
    for mode, at, _ in KILLS:
        procs[mode] = subprocess.Popen([sys.executable, str(root / "script.py"), str(root / mode), mode, str(at)],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for mode, proc in procs.items():
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == -signal.SIGKILL, f"{mode}: exit code {proc.returncode} (expected SIGKILL)\n{output}"
    return {mode: root / mode for mode, _, _ in KILLS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module]:
    return _fit(tmp_path_factory.mktemp("ref") / "run")


@pytest.mark.parametrize("mode,at,resume_from", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_then_resume_is_exact(mode: str, at: int, resume_from: int, killed: dict[str, Path],
                                      reference: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    run = killed[mode]
    steps = sorted(p.name for p in (run / "ckpt").glob("step-*"))
    assert steps[-1] == f"step-{resume_from:09d}", f"{mode}: newest complete checkpoint after the kill: {steps}"
    # the fault left what it should (so this test would notice an injection that did not happen)
    temporaries = sorted(p.name for p in (run / "ckpt").glob(".tmp-*"))
    latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
    if mode in ("mid-tensors", "before-rename"):
        assert len(temporaries) == 1 and temporaries[0].startswith(f".tmp-step-{at:09d}-"), temporaries
        files = sorted(p.name for p in (run / "ckpt" / temporaries[0]).iterdir())
        assert len(files) == (2 if mode == "mid-tensors" else 5), f"{mode}: temporary holds {files}"
    else:
        assert temporaries == [], temporaries
    if mode == "before-latest":
        assert latest == "ckpt/step-000000004", f"latest should still name step 4, names {latest}"
    if mode == "mid-latest":
        assert len(list(run.glob(".latest.*"))) == 1 and latest is None, "the cut-short first write of latest left no temporary"
    model, ema = _fit(run)
    for name, a, b in [("weights", model, reference[0]), ("EMA", ema, reference[1])]:
        sa, sb = a.state_dict(), b.state_dict()
        diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{mode}: resumed {name} differ from one-go by {diff:.3g}"
    logged = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(2, N + 1, 2)), f"{mode}: metrics log after resume: {logged}"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "ckpt", "latest", "metrics.jsonl"], f"{mode}: strays in run"
    left = sorted(p.name for p in (run / "ckpt").iterdir())
    assert all(n.startswith("step-") for n in left), f"{mode}: strays in ckpt: {left}"
    assert (run / "latest").read_text().strip() == f"ckpt/step-{N:09d}"
