"""Train a preconditioned denoiser by denoising score matching, reproducibly and resumably.

Each step draws, from one seeded CPU generator, the global batch's noise levels (``batch_size``
values from the sigma distribution) and then its Gaussian noise; the data indices come from a
per-epoch permutation seeded by ``(seed, epoch)``. The stream depends only on the seed and the step,
so a resumed run (generator state restored from the checkpoint) and a multi-process run (every rank
draws the global batch and keeps its slice) reproduce single-process training.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_data, check_positive
from .._io import atomic_write_text
from ..nets.precondition import Preconditioned, build
from . import checkpoint as ckpt_io
from . import distributed as ddp
from .ema import EMA
from .loss import check_weighting, default_weighting, denoising_loss
from .sigma_dist import Levels, SigmaDist

# Arguments that must not change when a run is resumed (anything else, e.g. steps, may).
_RESUME_KEYS = ("sigma_dist", "weighting", "batch_size", "lr", "warmup", "grad_clip", "weight_decay", "betas",
                "ema_decay", "ema_warmup", "seed", "data")


class EpochSampler:
    """Global batch indices for step ``t``: samples ``t*B .. t*B+B-1`` of the concatenated epochs,
    epoch ``e`` being ``randperm(N)`` from a generator seeded by ``(seed, e)`` (stateless)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self._cache: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            s = int(np.random.SeedSequence([self.seed, 0x5EED, epoch]).generate_state(1, dtype=np.uint64)[0])
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(s))
        return self._cache[epoch]

    def indices(self, step: int) -> Tensor:
        start = step * self.batch
        e0, e1 = start // self.n, (start + self.batch - 1) // self.n
        perm = torch.cat([self._perm(e) for e in range(e0, e1 + 1)])
        off = start - e0 * self.n
        return perm[off : off + self.batch]


def _fingerprint(data: Tensor) -> str:
    arr = data.detach().cpu().contiguous()
    return hashlib.sha256(arr.view(torch.uint8).numpy().tobytes()).hexdigest()[:32]


def _load_data(data: Union[Tensor, str], root: Optional[str], n: Optional[int], seed: int) -> tuple[Tensor, dict[str, Any]]:
    if isinstance(data, str):
        from ..data import load as load_dataset

        tensor = load_dataset(data, root=root, split="train", n=n, seed=seed)
        desc: dict[str, Any] = {"name": data, "root": None if root is None else str(root), "n": n}
    elif isinstance(data, Tensor):
        tensor, desc = data, {"name": None}
    else:
        raise ValueError(f"data must be a tensor (N, *shape) or a dataset name, got {type(data).__name__}")
    tensor = check_data("data", tensor)
    desc.update(shape=list(tensor.shape), sha256=_fingerprint(tensor))
    return tensor, desc


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or int(v) != v or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
    return int(v)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    rng = {"batch": gen.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(rng: dict[str, Tensor], gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(rng["batch"])
    torch.set_rng_state(rng["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in rng:
        torch.cuda.set_rng_state(rng["torch_cuda"], device)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the metrics lines of steps <= ``step`` (drops lines written after the resumed checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def fit(
    model: Union[Preconditioned, dict[str, Any]],
    data: Union[Tensor, str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    sigma_dist: str,
    sigma_min: float,
    sigma_max: float,
    levels: Levels = None,
    weighting: Optional[str] = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    warmup: int = 100,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    ema_decay: float = 0.999,
    ema_warmup: bool = True,
    seed: int = 0,
    out: Union[str, Path, None] = None,
    ckpt_every: int = 1000,
    keep: int = 2,
    log_every: int = 100,
    resume: bool = True,
    device: Union[str, torch.device, None] = None,
    compile: bool = False,
    bf16: bool = True,
    progress: bool = True,
    data_root: Optional[str] = None,
    data_n: Optional[int] = None,
    on_checkpoint: Optional[Callable[[int, Path], None]] = None,
) -> Preconditioned:
    """Denoising score matching (``scoredyn.train.loss``) with AdamW; returns the EMA denoiser.

    ``model``: a denoiser from :func:`scoredyn.nets.precondition`, or its spec dict (built with
    ``torch.manual_seed(seed)``). ``data``: a tensor ``(N, *shape)`` or a ``scoredyn.data`` name
    (with ``data_root``, ``data_n``). The learning rate rises linearly over ``warmup`` steps;
    gradients are clipped to norm ``grad_clip`` (0: off); the EMA decay is
    ``min(ema_decay, (1+t)/(10+t))`` with ``ema_warmup``. On CUDA the forward pass runs under bf16
    autocast unless ``bf16=False`` (never on CPU; the loss and optimizer stay float32); ``compile``
    wraps the loss in ``torch.compile``. With ``out``: JSON-lines metrics in
    ``out/metrics.jsonl`` every ``log_every`` steps, a checkpoint every ``ckpt_every`` steps and at
    the end, and with ``resume`` training continues exactly from ``out``'s latest checkpoint.
    ``on_checkpoint(step, path)`` is called after each checkpoint. Under ``torchrun`` the global
    batch is split over the ranks (see ``scoredyn.train.distributed``). The global torch RNG is
    seeded with ``seed + rank`` (it drives dropout only) and saved in checkpoints.
    """
    steps = _check_int("steps", steps, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    warmup = _check_int("warmup", warmup, 0)
    ckpt_every = _check_int("ckpt_every", ckpt_every, 1)
    log_every = _check_int("log_every", log_every, 1)
    lr = check_positive("lr", lr)
    grad_clip = check_positive("grad_clip", grad_clip, allow_zero=True)
    weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
    seed = _check_int("seed", seed, 0)
    sdist = SigmaDist(sigma_dist, sigma_min=sigma_min, sigma_max=sigma_max, levels=levels, p_mean=p_mean, p_std=p_std)

    if isinstance(model, dict):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(model)
    if not isinstance(model, Preconditioned):
        raise ValueError(
            f"model must be a denoiser from scoredyn.nets.precondition (or its spec dict), got {type(model).__name__}"
        )
    weighting = check_weighting(weighting if weighting is not None else default_weighting(model.conditioning))

    info = ddp.setup(device)
    try:
        return _fit(model, data, info, sdist, steps=steps, batch_size=batch_size, lr=lr, weighting=weighting,
                    warmup=warmup, grad_clip=grad_clip, weight_decay=weight_decay, betas=tuple(float(b) for b in betas),
                    ema_decay=ema_decay, ema_warmup=ema_warmup, seed=seed, out=out, ckpt_every=ckpt_every, keep=keep,
                    log_every=log_every, resume=resume, compile=compile, bf16=bf16, progress=progress, data_root=data_root,
                    data_n=data_n, on_checkpoint=on_checkpoint)
    finally:
        ddp.teardown(info)


def _fit(model: Preconditioned, data: Union[Tensor, str], info: ddp.DistInfo, sdist: SigmaDist, *, steps: int,
         batch_size: int, lr: float, weighting: str, warmup: int, grad_clip: float, weight_decay: float,
         betas: tuple[float, ...], ema_decay: float, ema_warmup: bool, seed: int, out: Union[str, Path, None],
         ckpt_every: int, keep: int, log_every: int, resume: bool, compile: bool, bf16: bool, progress: bool,
         data_root: Optional[str], data_n: Optional[int], on_checkpoint: Optional[Callable[[int, Path], None]]
         ) -> Preconditioned:
    dev = info.device
    data_t, data_desc = _load_data(data, data_root, data_n, seed)
    n = data_t.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the data set ({n} points); use batch_size <= {n}")
    if batch_size % info.world:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({info.world})")
    if out is not None:
        model.spec()  # fail now, not at the first checkpoint, if the network cannot be described
    dtype = next(model.parameters()).dtype
    model.data_shape = tuple(data_t.shape[1:])
    model.to(dev).train()
    data_t = data_t.to(device=dev, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp.broadcast_parameters(params, info)
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)  # type: ignore[arg-type]
    ema = EMA(model, ema_decay, ema_warmup)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + info.rank)  # dropout, if any
    sampler = EpochSampler(n, batch_size, seed)
    config = {
        "data_shape": list(data_t.shape[1:]),
        "train": {"sigma_dist": sdist.config(), "weighting": weighting, "batch_size": batch_size, "lr": lr,
                  "warmup": warmup, "grad_clip": grad_clip, "weight_decay": weight_decay, "betas": list(betas),
                  "ema_decay": ema_decay, "ema_warmup": ema_warmup, "seed": seed, "data": data_desc,
                  "steps": steps, "world_size": info.world},
    }

    start = 0
    out_p = Path(out) if out is not None else None
    if out_p is not None and resume and ckpt_io.has_checkpoint(out_p):
        ck = ckpt_io.find_checkpoint(out_p)
        saved = ckpt_io.read_config(ck)
        if saved["model"] != model.spec():
            raise ValueError(f"cannot resume from {ck}: it holds model {saved['model']}, not {model.spec()}; "
                             "use resume=False or another out directory")
        changed = {k: (saved["train"].get(k), config["train"][k]) for k in _RESUME_KEYS
                   if saved["train"].get(k) != config["train"][k]}
        if changed:
            raise ValueError(f"cannot resume from {ck}: training arguments differ (saved, now): {changed}; "
                             "use resume=False or another out directory")
        ckpt_io.load_weights(model, ck / "model.safetensors", dev)
        ckpt_io.load_weights(ema.module, ck / "ema.safetensors", dev)
        ckpt_io.load_optimizer(opt, ck, saved["optimizer"])
        _set_rng_state(ckpt_io.load_rng(ck), gen, dev)
        start = int(saved["step"])
    log_path = out_p / "metrics.jsonl" if out_p is not None else None
    if log_path is not None and info.is_main:
        out_p.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        _truncate_log(log_path, start)

    loss_fn = torch.compile(denoising_loss) if compile else denoising_loss
    autocast = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16 and dev.type == "cuda")
    local = batch_size // info.world
    lo = info.rank * local
    loss_sum = torch.zeros((), device=dev)
    n_logged, t_log = 0, time.perf_counter()
    draw = torch.float64 if dtype == torch.float64 else torch.float32  # noise drawn at the model's precision
    pin = dev.type == "cuda"
    bar = tqdm(total=steps, initial=start, desc="train", disable=not progress or not info.is_main, dynamic_ncols=True)
    for step in range(start, steps):
        idx = sampler.indices(step)[lo : lo + local]
        sigma = sdist.sample(batch_size, gen)[lo : lo + local]
        noise = torch.randn((batch_size, *data_t.shape[1:]), generator=gen, dtype=draw)[lo : lo + local]
        if pin:  # page-locked host copies let the transfers run without blocking the host
            sigma, noise = sigma.pin_memory(), noise.pin_memory()
        x0 = data_t[idx.to(dev)]
        with torch.autocast(**autocast):  # type: ignore[arg-type]
            per_sample = loss_fn(model, x0, sigma.to(dev, dtype, non_blocking=pin),
                                 noise.to(dev, dtype, non_blocking=pin), weighting)
        loss = per_sample.sum() / batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.all_reduce_grads(params, info)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else None
        lr_now = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        for group in opt.param_groups:
            group["lr"] = lr_now
        opt.step()
        decay = ema.update(model, step)
        loss_sum += loss.detach().float()
        n_logged += 1
        done = step + 1
        bar.update(1)
        if done % log_every == 0 or done == steps:
            mean_loss = float(ddp.all_reduce_sum(loss_sum, info)) / n_logged
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"training diverged: loss {mean_loss} at step {done}; lower lr or raise warmup")
            now = time.perf_counter()
            rec = {"step": done, "loss": mean_loss, "lr": lr_now, "ema_decay": decay,
                   "grad_norm": None if grad_norm is None else float(grad_norm), "it_s": n_logged / (now - t_log)}
            if info.is_main:
                bar.set_postfix(loss=f"{mean_loss:.4g}")
                if log_path is not None:
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
            loss_sum.zero_()
            n_logged, t_log = 0, now
        if out_p is not None and (done % ckpt_every == 0 or done == steps):
            if not bool(torch.isfinite(torch.cat([p.detach().reshape(-1) for p in params])).all()):
                raise RuntimeError(f"training diverged: non-finite weights at step {done}; lower lr or raise warmup")
            if info.is_main:
                path = ckpt_io.save_checkpoint(out_p, done, model=model, ema=ema.module, optimizer=opt,
                                               rng=_rng_state(gen, dev), config=config, keep=keep)
                if on_checkpoint is not None:
                    on_checkpoint(done, path)
            ddp.barrier(info)
    bar.close()
    return ema.module.eval()
