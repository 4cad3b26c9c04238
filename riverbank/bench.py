"""Chapter 6 benchmarks: time and peak memory of naive, tiled and SDPA attention, and the Triton kernel on a GPU.

``python -m riverbank.bench`` (or ``make bench``) prints the table and checks the chapter's targets
(the CPU table is timed on one thread unless ``--threads`` says otherwise; see ``cpu_rows``):

- CPU, fp32, N = 8192, d = 64: tiled peak memory at most 1/20 of naive, tiled time no worse
  than naive, tiled time within 2× of SDPA;
- GPU (when there is one), fp16, N = 4096, d = 64: the Triton kernel within 2× of SDPA's time,
  with far less memory than naive.

Peak memory is measured, not computed from shapes. On the CPU it is the highest point of the
running total of allocations minus frees that torch's profiler records while the function runs
(the inputs, allocated before, are not counted). The peak resident memory of the process would
over-report the tiled versions, because the allocator keeps freed blocks. On a GPU it is
``torch.cuda.max_memory_allocated`` above what was allocated before the call.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .flash import naive_attention, tiled_attention

MB = 2**20


@dataclass
class Row:
    """One measurement: which method, on what, how long and how much memory at the peak."""

    device: str
    method: str
    n: int
    d: int
    dtype: str
    seconds: float
    peak_bytes: int


def cpu_name() -> str:
    """The CPU model and the number of threads torch uses, e.g. 'AMD EPYC 7B13, 2 threads'."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads > 1 else ''}"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what C++ code writes to file descriptor 2 (the profiler logs its start and stop)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """The most memory ``fn`` held allocated at once on the CPU, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    # Each event carries what it allocated minus what it freed itself; in time order, the
    # running total is the memory held, and its maximum is the peak.
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(fn: Callable[[], object]) -> int:
    """The most memory ``fn`` held allocated at once on the current GPU, above what was there before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def best_seconds(fns: dict[str, Callable[[], object]], repeats: int = 3, sync: Callable[[], None] = lambda: None,
                 inner: int = 1) -> dict[str, float]:
    """Fastest time per call of each function, taking turns, so that other load hits all alike.

    One untimed warm-up call each, then ``repeats`` rounds; in each round every function runs
    ``inner`` times in a row. The minimum over rounds is the least disturbed measurement.
    """
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: min(t) for name, t in times.items()}


def _qkv(n: int, d: int, heads: int, dtype, device, seed: int = 0):
    """(1, heads, n, d) each: SDPA picks its fused kernels only for 4-D (batch, heads, n, d) inputs."""
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(1, heads, n, d, generator=g, device=device, dtype=dtype) for _ in range(3))


def cpu_methods(q, k, v, causal: bool = False) -> dict[str, Callable[[], object]]:
    return {
        "naive": lambda: naive_attention(q, k, v, causal),
        "tiled": lambda: tiled_attention(q, k, v, causal),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    }


def cpu_rows(ns=(1024, 2048, 4096, 8192), d: int = 64, heads: int = 1, repeats: int = 3,
             threads: int | None = None) -> list[Row]:
    """Naive, tiled and SDPA on the CPU in float32: time and peak memory for each N.

    ``threads`` sets torch's thread count while timing. One thread is the fairest when other
    programs share the cores: a multi-threaded loop of many small operations waits at every
    operation for its slowest thread, so busy cores slow the tiled version far more than the
    others. ``None`` keeps torch's setting.
    """
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        device = f"CPU ({cpu_name()})"
        for n in ns:
            q, k, v = _qkv(n, d, heads, torch.float32, "cpu")
            methods = cpu_methods(q, k, v)
            seconds = best_seconds(methods, repeats)
            for name, fn in methods.items():
                rows.append(Row(device, name, n, d, "float32", seconds[name], peak_cpu_bytes(fn)))
    finally:
        torch.set_num_threads(previous)
    return rows


def gpu_rows(ns=(1024, 2048, 4096, 8192), d: int = 64, heads: int = 16, dtype=torch.float16,
             repeats: int = 5) -> list[Row]:
    """Naive, SDPA and the Triton kernel on the GPU: time and peak memory for each N."""
    from .triton_flash import triton_attention

    rows = []
    device = torch.cuda.get_device_name()
    for n in ns:
        q, k, v = _qkv(n, d, heads, dtype, "cuda")
        methods = {
            "naive": lambda: naive_attention(q, k, v),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
            "triton": lambda: triton_attention(q, k, v),
        }
        seconds = best_seconds(methods, repeats, sync=torch.cuda.synchronize, inner=10)
        for name, fn in methods.items():
            rows.append(Row(device, name, n, d, str(dtype).removeprefix("torch."), seconds[name],
                            peak_cuda_bytes(fn)))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table: method, N, d, dtype, time (ms), peak memory (MB), device."""
    lines = [f"{'method':<7}{'N':>6}{'d':>4} {'dtype':<8}{'ms':>9}{'peak MB':>9}  device"]
    for r in rows:
        lines.append(f"{r.method:<7}{r.n:>6}{r.d:>4} {r.dtype:<8}{r.seconds * 1e3:>9.2f}"
                     f"{r.peak_bytes / MB:>9.2f}  {r.device}")
    return "\n".join(lines)


def loglog_slope(ns, values) -> float:
    """Least-squares slope of log(value) against log(N): 2 for N², 1 for linear growth."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _pick(rows: list[Row], method: str, n: int) -> Row:
    return next(r for r in rows if r.method == method and r.n == n)


def cpu_targets(rows: list[Row], n: int = 8192) -> list[tuple[str, float, float, bool]]:
    """(target, measured ratio, limit, met) for the three CPU targets at ``n``."""
    naive, tiled, sdpa = (_pick(rows, m, n) for m in ("naive", "tiled", "sdpa"))
    checks = [
        ("tiled peak memory / naive peak memory", tiled.peak_bytes / naive.peak_bytes, 1 / 20),
        ("tiled time / naive time", tiled.seconds / naive.seconds, 1.0),
        ("tiled time / SDPA time", tiled.seconds / sdpa.seconds, 2.0),
    ]
    return [(name, ratio, limit, ratio <= limit) for name, ratio, limit in checks]


def gpu_targets(rows: list[Row], n: int = 4096) -> list[tuple[str, float, float, bool]]:
    naive, sdpa, triton_row = (_pick(rows, m, n) for m in ("naive", "sdpa", "triton"))
    checks = [
        ("triton time / SDPA time", triton_row.seconds / sdpa.seconds, 2.0),
        ("triton peak memory / naive peak memory", triton_row.peak_bytes / naive.peak_bytes, 1 / 20),
    ]
    return [(name, ratio, limit, ratio <= limit) for name, ratio, limit in checks]


def _report(title: str, rows: list[Row], targets, target_n: int) -> bool:
    print(title)
    print(table(rows))
    ns = sorted({r.n for r in rows})
    for method in sorted({r.method for r in rows}, key=[r.method for r in rows].index):
        peaks = [_pick(rows, method, n).peak_bytes for n in ns]
        times = [_pick(rows, method, n).seconds for n in ns]
        print(f"log-log slope against N, {method:<7} memory {loglog_slope(ns, peaks):5.2f}   "
              f"time {loglog_slope(ns, times):5.2f}")
    print(f"targets at N = {target_n}:")
    ok = True
    for name, ratio, limit, met in targets:
        print(f"  {name:<40} {ratio:8.4f}  (limit {limit:.4f})  {'met' if met else 'MISSED'}")
        ok &= met
    print()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per size (default 5)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU table even if there is a GPU")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU table")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while timing on the CPU (default 1; 0: torch's own setting). "
                             "On shared, busy cores, more threads slow the tiled loop's many small "
                             "operations far more than the others, so the comparison is fairest on one.")
    args = parser.parse_args(argv)
    ok = True
    if not args.gpu_only:
        rows = cpu_rows(repeats=args.repeats, threads=args.threads or None)
        ok &= _report("CPU, float32, one head", rows, cpu_targets(rows), 8192)
    if torch.cuda.is_available() and not args.cpu_only:
        rows = gpu_rows(repeats=args.repeats)
        ok &= _report("GPU, float16, 16 heads (batch × heads)", rows, gpu_targets(rows), 4096)
    elif not args.cpu_only:
        print("No CUDA GPU here: the GPU table (Triton kernel compiled, against SDPA) is skipped.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
