"""Data-parallel training with ``torch.distributed`` (DESIGN.md §7).

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup` joins the process group by ``env://``: gloo
on CPU, nccl on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). Every rank draws the same global
batch, sigmas and noise from the same seeded stream and keeps its contiguous slice; gradients of
``sum(per-sample loss) / global_batch`` are summed over ranks with one all-reduce of a flat buffer,
so the update equals single-process training on the global batch up to the order of floating-point
summation. Rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, training on ``device``."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # True when setup() created the process group (and teardown() destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: Union[str, torch.device, None], local_rank: int = 0) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available else CPU; a bare ``"cuda"`` -> ``cuda:local_rank``."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"bad device {device!r}: {e}; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'auto'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup(device: Union[str, torch.device, None] = None) -> DistInfo:
    """Join (or reuse) the process group when launched with ``WORLD_SIZE > 1``; pick this rank's device."""
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), dev, False)
    if world_env <= 1:
        return DistInfo(0, 1, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev, True)


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(params: Iterable[Tensor], info: DistInfo) -> None:
    """Make every rank start from rank 0's weights."""
    if info.world > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_grads(params: Iterable[Tensor], info: DistInfo) -> None:
    """Sum the gradients over ranks (one all-reduce of a flat buffer)."""
    if info.world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """The sum of ``t`` over ranks (``t`` itself when single-process)."""
    if info.world > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def barrier(info: Optional[DistInfo]) -> None:
    """Wait for every rank."""
    if info is not None and info.world > 1:
        dist.barrier()
