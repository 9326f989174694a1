"""Benchmark (issue 7): how ``scoredyn.analytic.Empirical`` scales in N, on disk, and over processes.

B queries (uniform in [-1, 1]^d) against N training points (uniform in [-1, 1]^d, float32) at
sigma = 1; every measurement runs in a fresh subprocess.

1. Growth in N (``--ns``; the data a tensor in memory): median call time over ``--repeats`` calls,
   and the extra peak RSS of one call beyond the data (growth of ``VmHWM``, reset through
   ``/proc/self/clear_refs`` just before the call; the libraries are warmed up on a tiny model
   first). Growth exponents: least-squares slopes of log time and log extra memory against log N
   (expected about 1 and about 0: the set is streamed in chunks of ``O(B x chunk)`` memory).
2. Memory-mapped (``--memmap-gb`` GB): a ``.npy`` under ``bench/_cache/`` (written chunk by chunk,
   reused when present), ``np.load(path, mmap_mode="r")`` passed to ``Empirical(arr, device=...)``,
   which streams it chunk by chunk and drops each chunk's pages from the process after copying it.
   Reported: the peak RSS of the whole process against the file size, and the time per call. The
   file's pages stay in the kernel's page cache when memory allows, so calls after the first read
   from memory, not from disk.
3. Processes (CPU, gloo): N = ``--proc-n`` in 1 process with 2 threads against 2 processes with 1
   thread each (``torch.multiprocessing.spawn``, TCP rendezvous on localhost), each rank holding its
   contiguous shard and passing ``group=torch.distributed.group.WORLD``; time per call, speed-up,
   and the largest difference between the two results.

    OMP_NUM_THREADS=1 python bench/scale.py --ns 1000,10000 --memmap-gb 0.2 --repeats 2   # quick check
    python bench/scale.py --write       # N = 10^3..10^6, 4 GB on disk; writes ## Scale of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, PeakMemory, load_average, machine, max_rss_kib, publish, run_child, status_kib, timed

SECTION = "Scale"
CACHE = ROOT / "bench" / "_cache"
BLOCK = 16384  # rows per independently seeded block of the synthetic data
SIGMA = 1.0
SHARED_LOAD = 1.5  # a 1-minute load average above this marks the run as taken on a shared machine


def points(start: int, stop: int, d: int, seed: int = 0) -> np.ndarray:
    """Rows ``start..stop-1`` of the synthetic set (uniform in [-1, 1], float32), the same whichever range is asked."""
    out = np.empty((stop - start, d), dtype=np.float32)
    for blk in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else 0):
        lo, hi = blk * BLOCK, (blk + 1) * BLOCK
        rows = np.random.default_rng([seed, blk]).random((BLOCK, d), dtype=np.float32)
        a, b = max(lo, start), min(hi, stop)
        np.multiply(rows[a - lo : b - lo], 2, out=out[a - start : b - start])
        out[a - start : b - start] -= 1
    return out


def queries(args: argparse.Namespace) -> torch.Tensor:
    return torch.from_numpy(points(0, args.b, args.d, seed=1)).to(args.device)


def mib(kib: int | None) -> float:
    return float("nan") if kib is None else kib / 1024


# ---------------------------------------------------------------------------- children


def child_n(args: argparse.Namespace) -> dict:
    """One N, data in memory: extra peak memory of the first call, then the median of the repeats."""
    from scoredyn.analytic import Empirical
    from scoredyn.analytic.empirical import auto_chunk

    x = queries(args)
    data = torch.from_numpy(points(0, args.n, args.d)).to(args.device)
    model = Empirical(data)
    del data  # the model holds its own augmented copy (N, d + 2)
    Empirical(torch.from_numpy(points(0, 16, args.d)).to(args.device))(x, SIGMA)  # warm the libraries up, not this model
    rss = status_kib("VmRSS")
    # the first call of this model is the measured one: a warm-up would leave its blocks cached in the allocator
    with PeakMemory(args.device) as mem:
        model(x, SIGMA)
    t = timed(lambda: model(x, SIGMA), args.repeats, args.device, warmup=False)
    return dict(n=args.n, chunk=auto_chunk(args.n), median_s=t.median, times=t.times,
                extra_mib=mem.extra_mib, how=mem.how, rss_mib=mib(rss), table_mib=model.trainset.table.numel() * 4 / 2**20)


def child_memmap(args: argparse.Namespace) -> dict:
    """The memory-mapped file: peak RSS of the whole process and the time per call."""
    from scoredyn.analytic import Empirical
    from scoredyn.analytic.empirical import auto_chunk

    x = queries(args)
    rss_start = status_kib("VmRSS")
    t0 = time.perf_counter()
    arr = np.load(args.path, mmap_mode="r")
    model = Empirical(arr, device=args.device)  # validates the file block by block
    t_open = time.perf_counter() - t0
    peak_open = max_rss_kib()
    rss_before = status_kib("VmRSS")
    with PeakMemory("cpu") as mem:  # host memory: that is what a file larger than memory must not fill
        t = timed(lambda: model(x, SIGMA), args.repeats, args.device, warmup=True)
    peak_calls = mib(rss_before) + mem.extra_mib
    return dict(n=int(arr.shape[0]), file_gb=os.path.getsize(args.path) / 1e9, chunk=auto_chunk(int(arr.shape[0])),
                t_open=t_open, median_s=t.median, times=t.times, rss_start_mib=mib(rss_start),
                peak_open_mib=mib(peak_open), rss_before_calls_mib=mib(rss_before), peak_calls_mib=peak_calls,
                peak_mib=max(mib(peak_open), peak_calls), how=mem.how)


def child_procs(args: argparse.Namespace) -> dict:
    """N = proc-n in one process (``--world 1``), or over ``--world`` spawned gloo ranks, each with its contiguous shard."""
    if args.world == 1:
        return proc_rank(0, args, None)
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(proc_rank, args=(args, port), nprocs=args.world, join=True)
    return json.loads((Path(args.out) / f"rec{args.world}.json").read_text())


def proc_rank(rank: int, args: argparse.Namespace, port: int | None) -> dict:
    """One rank (or the single process): warm-up call, then the median of the repeats; rank 0 saves its record."""
    from scoredyn.analytic import Empirical

    torch.set_num_threads(args.threads)
    x = queries(args)
    world, group, barrier = args.world, None, (lambda: None)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        group, barrier = dist.group.WORLD, dist.barrier
    lo, hi = rank * args.n // world, (rank + 1) * args.n // world
    model = Empirical(torch.from_numpy(points(lo, hi, args.d)), group=group)

    def call() -> torch.Tensor:
        barrier()  # every rank starts the call together: the time is the job's, not one rank's
        return model(x, SIGMA)

    t = timed(call, args.repeats, warmup=True)
    rec = dict(processes=world, threads=torch.get_num_threads(), n=args.n, median_s=t.median, times=t.times)
    if rank == 0:
        np.save(Path(args.out) / f"out{world}.npy", t.out.numpy())
        (Path(args.out) / f"rec{world}.json").write_text(json.dumps(rec))
    if world > 1:
        torch.distributed.destroy_process_group()
    return rec


# ---------------------------------------------------------------------------- parent


def child_argv(args: argparse.Namespace, kind: str, **extra: object) -> list[str]:
    argv = [__file__, "--child", kind, "--d", str(args.d), "--b", str(args.b), "--repeats", str(args.repeats),
            "--device", args.device]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def threads_env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def slope(ns: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log n (nan when fewer than two usable points)."""
    use = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y > 0 and math.isfinite(y)]
    if len(use) < 2:
        return float("nan")
    return float(np.polyfit([u[0] for u in use], [u[1] for u in use], 1)[0])


def growth(args: argparse.Namespace) -> tuple[list[str], dict]:
    rows = []
    for n in args.ns:
        rows.append(run_child(child_argv(args, "n", n=n, threads=args.threads), threads_env(args.threads)))
        r = rows[-1]
        print(f"N={n:>9,}: {r['median_s']:.4f} s, extra {r['extra_mib']:.1f} MiB", flush=True)
    flops = [4.0 * args.b * r["n"] * args.d for r in rows]
    e_time = slope([r["n"] for r in rows], [r["median_s"] for r in rows])
    e_mem = slope([r["n"] for r in rows], [r["extra_mib"] for r in rows])
    full = [r for r in rows if r["chunk"] == max(q["chunk"] for q in rows)]  # N past the largest chunk
    full_ns = ", ".join(f"{r['n']:,}" for r in full)
    e_mem_full = slope([r["n"] for r in full], [r["extra_mib"] for r in full]) if len(full) >= 2 else float("nan")
    lines = [
        f"**Growth in N** (data a tensor in memory; {args.threads} thread(s); median of {args.repeats} calls; "
        f"extra memory: {rows[0]['how']} growth during the first call, beyond the data)",
        "",
        "| N | chunk | model's data (MiB) | time per call (s) | s per 10^6 points | GFLOP/s | extra peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, f in zip(rows, flops):
        lines.append(f"| {r['n']:,} | {r['chunk']} | {r['table_mib']:.0f} | {r['median_s']:.4f} | "
                     f"{r['median_s'] / r['n'] * 1e6:.3f} | {f / r['median_s'] / 1e9:.1f} | {r['extra_mib']:.1f} |")
    lines += ["", f"Growth exponents (least-squares slope in log-log over N = {', '.join(f'{n:,}' for n in args.ns)}): "
              f"time {e_time:.2f} (expected ~1), extra memory {e_mem:.2f} (expected ~0)"
              + (f"; extra memory over the N that fill a whole chunk ({full_ns}): "
                 f"{e_mem_full:.2f}" if math.isfinite(e_mem_full) else "")
              + ". The chunk is automatic (2048 rows whatever the batch, never more than N), so the "
              "working set of a call grows with N only until N fills one chunk."]
    return lines, dict(rows=rows, exponent_time=e_time, exponent_memory=e_mem, exponent_memory_full_chunks=e_mem_full)


def memmap_file(gb: float, d: int) -> Path:
    """``bench/_cache/scale_<N>x<d>_float32.npy`` of about ``gb`` GB, written block by block unless present."""
    n = max(1, round(gb * 1e9 / (4 * d)))
    path = CACHE / f"scale_{n}x{d}_float32.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (n, d) and arr.dtype == np.float32:
                return path
        except ValueError:
            pass
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=".scale.", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                      "fortran_order": False, "shape": (n, d)})
            for start in range(0, n, BLOCK):
                points(start, min(start + BLOCK, n), d).tofile(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def on_disk(args: argparse.Namespace) -> tuple[list[str], dict]:
    path = memmap_file(args.memmap_gb, args.d)
    r = run_child(child_argv(args, "memmap", path=path, threads=args.threads), threads_env(args.threads))
    print(f"memmap N={r['n']:,}: {r['median_s']:.3f} s per call, peak RSS {r['peak_mib']:.0f} MiB "
          f"for a {r['file_gb']:.2f} GB file", flush=True)
    lines = [
        f"**Memory-mapped training set** (`np.load(path, mmap_mode=\"r\")` -> `Empirical(arr, device=\"{args.device}\")`, "
        f"{args.threads} thread(s), median of {args.repeats} calls after one; RSS: `VmRSS` / `VmHWM` of the whole process)",
        "",
        "| N | file (GB) | chunk | open + check (s) | time per call (s) | s per 10^6 points | RSS after imports (MiB) | "
        "peak RSS, whole process (MiB) | peak RSS / file size |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['n']:,} | {r['file_gb']:.2f} | {r['chunk']} | {r['t_open']:.2f} | {r['median_s']:.3f} | "
        f"{r['median_s'] / r['n'] * 1e6:.3f} | {r['rss_start_mib']:.0f} | {r['peak_mib']:.0f} | "
        f"{r['peak_mib'] * 2**20 / (r['file_gb'] * 1e9):.3f} |",
        "",
        f"Peak RSS above the imports: {r['peak_mib'] - r['rss_start_mib']:.0f} MiB (opening and checking the file: "
        f"{r['peak_open_mib'] - r['rss_start_mib']:.0f} MiB; the calls: {r['peak_calls_mib'] - r['rss_start_mib']:.0f} MiB), "
        f"for {r['file_gb'] * 1e9 / 2**20:.0f} MiB on disk; one chunk of {r['chunk']} rows is "
        f"{r['chunk'] * args.d * 4 / 2**20:.1f} MiB.",
    ]
    return lines, r


def processes(args: argparse.Namespace) -> tuple[list[str], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        common = child_argv(args, "procs", n=args.proc_n, out=tmp)
        common[common.index("--device") + 1] = "cpu"
        single = run_child(common + ["--world", "1", "--threads", "1"], threads_env(1))
        one = run_child(common + ["--world", "1", "--threads", "2"], threads_env(2))
        two = run_child(common + ["--world", "2", "--threads", "1"], threads_env(1))
        out1, out2 = np.load(Path(tmp) / "out1.npy"), np.load(Path(tmp) / "out2.npy")
    diff = float(np.abs(out1 - out2).max())
    speed = one["median_s"] / two["median_s"]
    print(f"processes N={args.proc_n:,}: 1 x 2 threads {one['median_s']:.4f} s, 2 x 1 thread {two['median_s']:.4f} s, "
          f"speed-up {speed:.2f}, max |diff| {diff:.1e}", flush=True)
    lines = [
        f"**Processes** (CPU, N = {args.proc_n:,}; 2 processes: `torch.multiprocessing.spawn`, gloo, "
        "each rank its contiguous shard and `group=torch.distributed.group.WORLD`; median of "
        f"{args.repeats} calls after one, each call started after a barrier)",
        "",
        "| processes x threads | time per call (s) | speed-up over 1 x 2 | max abs difference from 1 x 2 |",
        "|---|---|---|---|",
        f"| 1 x 1 | {single['median_s']:.4f} | {one['median_s'] / single['median_s']:.2f} | (not compared) |",
        f"| 1 x 2 | {one['median_s']:.4f} | 1.00 | 0 |",
        f"| 2 x 1 | {two['median_s']:.4f} | {speed:.2f} | {diff:.1e} |",
    ]
    return lines, dict(single_thread=single, one=one, two=two, speedup=speed, max_abs_diff=diff)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="1000,10000,100000,1000000", help="comma-separated training-set sizes")
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--b", type=int, default=64, help="queries per call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for the growth and memmap parts")
    p.add_argument("--device", default="cpu", help="device of the growth and memmap parts (the process part is CPU/gloo)")
    p.add_argument("--memmap-gb", type=float, default=4.0, help="size of the memory-mapped file in GB (10^9 bytes)")
    p.add_argument("--skip-memmap", action="store_true")
    p.add_argument("--proc-n", type=int, default=100_000, help="training-set size of the process comparison")
    p.add_argument("--skip-procs", action="store_true")
    p.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md (## Scale)")
    p.add_argument("--child", choices=["n", "memmap", "procs"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        rec = {"n": child_n, "memmap": child_memmap, "procs": child_procs}[args.child](args)
        print(json.dumps(rec))
        return
    args.ns = [int(v) for v in args.ns.split(",")]
    load0, t0 = load_average(), time.perf_counter()
    lines, record = growth(args)
    if not args.skip_memmap:
        more, record["memmap"] = on_disk(args)
        lines += [""] + more
    if not args.skip_procs:
        more, record["processes"] = processes(args)
        lines += [""] + more
    load1, total = load_average(), time.perf_counter() - t0
    shared = load0 is not None and load0 > SHARED_LOAD  # at the start: later, the load includes this benchmark's own
    head = [
        f"Machine: {machine()}; device {args.device}. B = {args.b} queries, d = {args.d}, float32, sigma = {SIGMA}, "
        f"uniform data and queries in [-1, 1]; every row measured in a fresh subprocess. Total time {total:.0f} s.",
    ]
    if shared:
        head.append(f"**Shared machine**: 1-minute load average {load0:.1f} at the start (> {SHARED_LOAD}; "
                    f"{load1:.1f} at the end, this benchmark included): other jobs ran at the same time, so "
                    "timings may be off by up to 2x.")
    text = "\n".join(head + [""] + lines)
    print()
    publish(SECTION, text, __file__, args.write)


if __name__ == "__main__":
    main()
