"""Sharded analytical scores and memorization over torch.distributed (gloo, 2 CPU processes started
here) == one process."""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scoredyn.analytic import Empirical, NoiseAgnostic
from scoredyn.metrics import memorization

WORLD = 2


def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(37, 6, generator=g, dtype=torch.float64)
    x = torch.cat([data[:3] + 0.05 * torch.randn(3, 6, generator=g, dtype=torch.float64),
                   3 * torch.randn(3, 6, generator=g, dtype=torch.float64)])
    sigma = torch.linspace(0.05, 2.0, x.shape[0], dtype=torch.float64)
    return data, x, sigma


def models(data: torch.Tensor, group: object) -> dict[str, object]:
    levels = torch.exp(torch.linspace(math.log(0.02), math.log(3.0), 10, dtype=torch.float64))
    return {
        "empirical": Empirical(data, chunk_size=5, group=group),
        "tempered_topk": Empirical(data, temperature=lambda s: (0.5 / s).clamp(min=1.0), top_k=4, group=group),
        "kim": NoiseAgnostic(data, sigma_min=0.02, sigma_max=3.0, chunk_size=6, group=group),
        "zhou": NoiseAgnostic(data, conditioning="unconditional", levels=levels, group=group),
    }


def evaluate(ms: dict[str, object], x: torch.Tensor, sigma: torch.Tensor) -> dict[str, np.ndarray]:
    out = {}
    for name, m in ms.items():
        out[name] = m(x, sigma).numpy()
        if isinstance(m, NoiseAgnostic):
            out[name + "_logL"] = m.log_lyapunov(x).numpy()
    return out


def memorization_arrays(x: torch.Tensor, train: torch.Tensor, group: object) -> dict[str, np.ndarray]:
    m = memorization(x, train, sigma_min=0.1, group=group)
    return {"mem_ratio": m.ratio.numpy(), "mem_index": m.nn_index.numpy().astype(np.float64),
            "mem_distance": m.nn_distance.numpy()}


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        data, x, sigma = problem()
        shard = data[:20] if rank == 0 else data[20:]  # uneven shards
        res = evaluate(models(shard, dist.group.WORLD), x, sigma)
        res.update(memorization_arrays(x, shard, dist.group.WORLD))
        np.savez(Path(out_dir) / f"rank{rank}.npz", **res)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="torch.distributed (gloo) not available")
@pytest.mark.timeout(120)
def test_two_gloo_ranks_equal_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    data, x, sigma = problem()
    single = evaluate(models(data, None), x, sigma)
    single.update(memorization_arrays(x, data, None))
    for rank in range(WORLD):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for name, ref in single.items():
            err = float(np.abs(got[name] - ref).max() / np.abs(ref).max())
            assert err < 1e-12, f"rank {rank}, {name}: sharded result differs from one process by {err:.2e}"
