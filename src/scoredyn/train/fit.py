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
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_data
from .._io import atomic_write_text
from ..nets.precondition import Preconditioned, build
from . import checkpoint as ckpt_io
from . import distributed as ddp
from .divergence import DivergenceMonitor
from .ema import EMA
from .config import TrainConfig
from .loss import default_weighting, denoising_loss
from .sigma_dist import SigmaDist
from .tempered import Tempering



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
    config: TrainConfig,
    *,
    out: Union[str, Path, None] = None,
    resume: bool = True,
    overwrite: bool = False,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    data_root: Optional[str] = None,
    data_n: Optional[int] = None,
    on_checkpoint: Optional[Callable[[int, Path], None]] = None,
    tempering: Optional[Tempering] = None,
) -> Preconditioned:
    """Denoising score matching (``scoredyn.train.loss``) with AdamW as ``config`` says; returns the EMA denoiser.

    ``model``: a denoiser from :func:`scoredyn.nets.precondition`, or its spec dict (built with
    ``torch.manual_seed(config.seed)``). ``data``: a tensor ``(N, *shape)`` or a ``scoredyn.data`` name
    (with ``data_root``, ``data_n``). With ``out``: JSON-lines metrics in ``out/metrics.jsonl``, a
    checkpoint every ``config.ckpt_every`` steps and at the end, and with ``resume`` training continues
    exactly from ``out``'s newest valid checkpoint (whose config must agree on :data:`scoredyn.train.config.RESUME_FIELDS`);
    ``resume=False`` on a non-empty ``out`` needs ``overwrite`` (the old run is moved aside, see
    ``scoredyn.train.checkpoint.prepare_run``). ``out`` is locked against a second writer. A loss
    growing 1000x over its running median stops training (``scoredyn.train.divergence``).
    ``on_checkpoint(step, path)`` is called after each checkpoint. ``tempering``: Zhou et al.'s
    temperature-smoothed target below ``sigma_c`` (:mod:`scoredyn.train.tempered`; a resumed run must
    use the same). Under ``torchrun`` the global
    batch is split over the ranks (see ``scoredyn.train.distributed``). The global torch RNG is
    seeded with ``seed + rank`` (it drives dropout only) and saved in checkpoints.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a scoredyn.train.TrainConfig, got {type(config).__name__}")
    if isinstance(model, dict):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build(model)
    if not isinstance(model, Preconditioned):
        raise ValueError(
            f"model must be a denoiser from scoredyn.nets.precondition (or its spec dict), got {type(model).__name__}"
        )
    config = config.replace(weighting=config.weighting or default_weighting(model.conditioning))
    info = ddp.setup(device)
    lock = None
    try:
        lock = ckpt_io.lock_run(out) if out is not None and info.is_main else None
        return _fit(model, data, config, info, out=None if out is None else Path(out), resume=resume,
                    overwrite=overwrite, progress=progress, data_root=data_root, data_n=data_n,
                    on_checkpoint=on_checkpoint, tempering=tempering)
    finally:
        if lock is not None:
            lock.release()
        ddp.teardown(info)


class _Run:
    """The state of one training run: model, optimizer, EMA, data, noise stream and where it is saved."""

    def __init__(self, model: Preconditioned, data: Tensor, data_desc: dict[str, Any], config: TrainConfig,
                 info: ddp.DistInfo, out: Optional[Path], tempering: Optional[Tempering] = None) -> None:
        # ------------------------------------------------------------------ setup
        c = config
        self.config, self.info, self.out = c, info, out
        self.sdist = SigmaDist(c.sigma_dist, sigma_min=c.sigma_min, sigma_max=c.sigma_max, levels=c.levels,
                               p_mean=c.p_mean, p_std=c.p_std)
        n = data.shape[0]
        if c.batch_size > n:
            raise ValueError(f"batch_size ({c.batch_size}) is larger than the data set ({n} points); use batch_size <= {n}")
        if c.batch_size % info.world:
            raise ValueError(f"batch_size ({c.batch_size}) must be divisible by the number of processes ({info.world})")
        if out is not None:
            model.spec()  # fail now, not at the first checkpoint, if the network cannot be described
        dev = info.device
        self.dtype = next(model.parameters()).dtype
        model.data_shape = tuple(data.shape[1:])
        self.model = model.to(dev).train()
        self.data = data.to(device=dev, dtype=self.dtype)
        self.params = [p for p in model.parameters() if p.requires_grad]
        ddp.broadcast_parameters(self.params, info)
        self.opt = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.ema = EMA(model, c.ema_decay, c.ema_warmup)
        self.gen = torch.Generator().manual_seed(c.seed)
        torch.manual_seed(c.seed + info.rank)  # dropout, if any
        self.sampler = EpochSampler(n, c.batch_size, c.seed)
        self.saved_config = {
            "data_shape": list(data.shape[1:]),
            "train": {"sigma_dist": self.sdist.config(), "weighting": c.weighting, "batch_size": c.batch_size,
                      "lr": c.lr, "warmup": c.warmup, "grad_clip": c.grad_clip, "weight_decay": c.weight_decay,
                      "betas": list(c.betas), "ema_decay": c.ema_decay, "ema_warmup": c.ema_warmup, "seed": c.seed,
                      "data": data_desc, "steps": c.steps, "world_size": info.world},
            "train_config": c.as_dict(),
            "tempering": None if tempering is None else tempering.as_dict(),
        }
        self.tempering = tempering
        self.table = None if tempering is None else tempering.neighbours(self.data)  # K neighbours, found once
        self.loss_fn = torch.compile(denoising_loss) if c.compile else denoising_loss
        self.autocast = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=c.bf16 and dev.type == "cuda")
        self.local = c.batch_size // info.world
        self.lo = info.rank * self.local
        self.draw = torch.float64 if self.dtype == torch.float64 else torch.float32  # noise at the model's precision
        self.pin = dev.type == "cuda"

    # ---------------------------------------------------------------------- resume
    def resume(self) -> int:
        """Load ``out``'s newest valid checkpoint if its model and config agree; the step to continue from."""
        ck = None if self.out is None else ckpt_io.resume_point(self.out)
        if ck is None:
            return 0
        saved = ckpt_io.read_config(ck)
        if saved["model"] != self.model.spec():
            raise ValueError(f"cannot resume from {ck}: it holds model {saved['model']}, not {self.model.spec()}; "
                             "use resume=False or another out directory")
        if "train_config" not in saved:
            raise ValueError(f"cannot resume from {ck}: it was written by scoredyn 0.1 (no train_config); "
                             "use resume=False or another out directory")
        changed = TrainConfig.from_dict(saved["train_config"]).differences(self.config)
        if saved.get("tempering") != self.saved_config["tempering"]:
            changed["tempering"] = (saved.get("tempering"), self.saved_config["tempering"])
        if saved["train"].get("data") != self.saved_config["train"]["data"]:
            changed["data"] = (saved["train"].get("data"), self.saved_config["train"]["data"])
        if changed:
            raise ValueError(f"cannot resume from {ck}: training arguments differ (saved, now): {changed}; "
                             "use resume=False or another out directory")
        dev = self.info.device
        ckpt_io.load_weights(self.model, ck / "model.safetensors", dev)
        ckpt_io.load_weights(self.ema.module, ck / "ema.safetensors", dev)
        ckpt_io.load_optimizer(self.opt, ck, saved["optimizer"])
        _set_rng_state(ckpt_io.load_rng(ck), self.gen, dev)
        return int(saved["step"])

    # ---------------------------------------------------------------------- step
    def step(self, step: int) -> tuple[Tensor, Optional[Tensor], float, float]:
        """One optimizer step on the global batch of ``step`` (this rank's slice): ``(loss, grad_norm, lr, ema decay)``."""
        c, dev, lo, local = self.config, self.info.device, self.lo, self.local
        idx = self.sampler.indices(step)[lo : lo + local]
        sigma = self.sdist.sample(c.batch_size, self.gen)[lo : lo + local]
        noise = torch.randn((c.batch_size, *self.data.shape[1:]), generator=self.gen, dtype=self.draw)[lo : lo + local]
        if self.pin:  # page-locked host copies let the transfers run without blocking the host
            sigma, noise = sigma.pin_memory(), noise.pin_memory()
        x0 = self.data[idx.to(dev)]
        sigma, noise = sigma.to(dev, self.dtype, non_blocking=self.pin), noise.to(dev, self.dtype, non_blocking=self.pin)
        target = None
        if self.tempering is not None:  # Zhou et al.'s tempered target, eq. 10 (scoredyn.train.tempered)
            x = x0 + sigma.reshape(-1, *[1] * (x0.dim() - 1)) * noise
            target = self.tempering.denoiser_target(x, sigma, x0, self.data[self.table[idx.to(dev)]])
        with torch.autocast(**self.autocast):  # type: ignore[arg-type]
            per_sample = self.loss_fn(self.model, x0, sigma, noise, c.weighting, target)
        loss = per_sample.sum() / c.batch_size
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.all_reduce_grads(self.params, self.info)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip) if c.grad_clip > 0 else None
        lr_now = c.lr * min(1.0, (step + 1) / c.warmup) if c.warmup else c.lr
        for group in self.opt.param_groups:
            group["lr"] = lr_now
        self.opt.step()
        decay = self.ema.update(self.model, step)
        return loss.detach(), grad_norm, lr_now, decay

    # ---------------------------------------------------------------------- checkpoint
    def checkpoint(self, done: int, on_checkpoint: Optional[Callable[[int, Path], None]]) -> None:
        """Save weights, EMA, optimizer and RNG state after ``done`` steps (main rank), after a finiteness check."""
        assert self.out is not None
        if not bool(torch.isfinite(torch.cat([p.detach().reshape(-1) for p in self.params])).all()):
            raise RuntimeError(f"training diverged: non-finite weights at step {done}; lower lr or raise warmup")
        if self.info.is_main:
            path = ckpt_io.save_checkpoint(self.out, done, model=self.model, ema=self.ema.module, optimizer=self.opt,
                                           rng=_rng_state(self.gen, self.info.device), config=self.saved_config,
                                           keep=self.config.keep)
            if on_checkpoint is not None:
                on_checkpoint(done, path)
        ddp.barrier(self.info)


def _fit(model: Preconditioned, data: Union[Tensor, str], config: TrainConfig, info: ddp.DistInfo, *,
         out: Optional[Path], resume: bool, overwrite: bool, progress: bool, data_root: Optional[str], data_n: Optional[int],
         on_checkpoint: Optional[Callable[[int, Path], None]], tempering: Optional[Tempering] = None) -> Preconditioned:
    data_t, data_desc = _load_data(data, data_root, data_n, config.seed)
    run = _Run(model, data_t, data_desc, config, info, out, tempering)
    if out is not None and info.is_main:
        ckpt_io.prepare_run(out, resume=resume, overwrite=overwrite)
    ddp.barrier(info)
    start = run.resume() if resume else 0
    log_path = out / "metrics.jsonl" if out is not None else None
    if log_path is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        _truncate_log(log_path, start)

    # ---------------------------------------------------------------------- training loop
    steps, dev = config.steps, info.device
    loss_sum = torch.zeros((), device=dev)
    monitor = DivergenceMonitor(config.lr, run.data, reduce=lambda t: ddp.all_reduce_sum(t, info))
    n_logged, t_log = 0, time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc="train", disable=not progress or not info.is_main, dynamic_ncols=True)
    for step in range(start, steps):
        loss, grad_norm, lr_now, decay = run.step(step)
        loss_sum += loss.float()
        monitor.record(loss)
        n_logged += 1
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == steps:
            monitor.check(done)
            mean_loss = float(ddp.all_reduce_sum(loss_sum, info)) / n_logged
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
        if out is not None and (done % config.ckpt_every == 0 or done == steps):
            monitor.check(done)
            run.checkpoint(done, on_checkpoint)
    bar.close()
    return run.ema.module.eval()
