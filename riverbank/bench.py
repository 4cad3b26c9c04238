"""Chapter 6 benchmarks: time, throughput and peak memory of naive, tiled and SDPA attention, and the Triton kernel.

``python -m riverbank.bench`` (or ``make bench``) prints the table and checks the chapter's targets
(the CPU table is timed on one thread unless ``--threads`` says otherwise; see ``cpu_rows``):

- CPU, fp32, N = 8192, d = 64: tiled peak memory at most 1/20 of naive, tiled time no worse
  than naive, tiled time within 2× of SDPA, and the causal tiled loop, which skips the rows
  that cannot see a key block, at most 0.85 of the full loop's time;
- GPU (when there is one), fp16, N = 4096, d = 64: the Triton kernel within 2× of SDPA's time,
  with far less memory than naive, and its causal version (which skips the blocks above the
  diagonal) at most 0.8 of the full kernel's time.

Every method is timed with and without the causal mask. The TFLOP/s column counts 4·N²·d
floating-point operations per head for the forward pass (two N×N×d matrix products, a multiply
and an add each), and half that with the causal mask: the work a kernel needs, not the work it
does. A kernel that computes the masked half anyway (naive attention) shows half the rate. Each
SDPA row names the kernel that SDPA dispatched to (``sdpa_kernel_name``).

Peak memory is measured, not computed from shapes. On the CPU it is the highest point of the
running total of the allocations and frees that torch's profiler records, each with its own size
and time stamp, while the function runs (the inputs, allocated before, are not counted): see
``memory_events``. The peak resident memory of the process would over-report the tiled versions,
because the allocator keeps freed blocks. On a GPU it is ``torch.cuda.max_memory_allocated``
above what was allocated before the call.
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
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

# torch's profiler imports triton where it is installed. Triton reads TRITON_INTERPRET once, at
# that import, so set it first, as riverbank.triton_flash does (interpret without a GPU): then
# the kernel can still be imported after a memory measurement.
if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

from .flash import naive_attention, tiled_attention  # noqa: E402

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
    causal: bool = False
    heads: int = 1
    kernel: str = ""  # for SDPA: the kernel it dispatched to (see sdpa_kernel_name)

    @property
    def flops(self) -> float:
        return attention_flops(self.n, self.d, self.heads, self.causal)

    @property
    def tflops(self) -> float:
        """Floating-point operations per second, in units of 10¹², counted by ``attention_flops``."""
        return self.flops / self.seconds / 1e12


def attention_flops(n: int, d: int, heads: int = 1, causal: bool = False) -> float:
    """Forward-pass FLOPs of attention: 4·N²·d per head (QKᵀ and PV, 2·N²·d each), halved when causal.

    The softmax's O(N²) exponentials and sums are left out, as in the FlashAttention papers'
    benchmarks; with the causal mask only the half of the tiles a row can see counts.
    """
    return 4 * n * n * d * heads / (2 if causal else 1)


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


def running_peak(changes) -> int:
    """The highest point of the running total of ``changes`` (bytes allocated > 0, freed < 0), from 0."""
    live = peak = 0
    for change in changes:
        live += change
        peak = max(peak, live)
    return peak


def memory_events(fn: Callable[[], object]) -> list[tuple[int, int]]:
    """(time in ns, bytes) of every CPU allocation (bytes > 0) and free (< 0) while ``fn`` runs, in time order.

    These are the profiler's raw ``[memory]`` records, one per call into the allocator, each with
    its own size and time stamp, whichever operation (or none) was running: so allocations and
    frees nested inside other operations, autograd's backward among them, keep their order. (The
    per-operation totals, ``self_cpu_memory_usage``, net each operation's allocations against its
    frees, and would hide a temporary that an operation allocates and frees itself.)
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    records = prof.profiler.kineto_results.events()
    changes = [(e.start_ns(), i, e.nbytes()) for i, e in enumerate(records)
               if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    return [(ns, nbytes) for ns, _, nbytes in sorted(changes)]  # ties keep the order recorded


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """The most memory ``fn`` held allocated at once on the CPU, above what was allocated before it ran."""
    return running_peak(nbytes for _, nbytes in memory_events(fn))


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


# The operation that F.scaled_dot_product_attention dispatches to, and a short name for it.
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_flash_attention": "FlashAttention-2",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def sdpa_kernel_name(q, k, v, causal: bool = False) -> str:
    """Which kernel ``F.scaled_dot_product_attention`` runs for these inputs, read from the profiler.

    SDPA chooses among its backends at every call, from the device, dtype, shapes and flags: on
    the CPU a tiled flash kernel or the unfused "math" path, on a GPU FlashAttention-2, cuDNN,
    the memory-efficient kernel or math. The profiler records the operation it dispatched to.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    names = [e.name() for e in prof.profiler.kineto_results.events()]
    return next((SDPA_KERNELS[name] for name in names if name in SDPA_KERNELS), "unknown")


def sdpa_backends_that_run(q, k, v, causal: bool = False) -> list[str]:
    """The SDPA backends that accept these inputs when each is the only one allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"FLASH_ATTENTION": "flash", "CUDNN_ATTENTION": "cuDNN", "EFFICIENT_ATTENTION": "memory-efficient",
             "MATH": "math"}
    runs = []
    for member, name in names.items():
        backend = getattr(SDPBackend, member, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel(backend), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # each refusal warns why; the list says enough
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except (RuntimeError, NotImplementedError, ValueError):  # "No available kernel", or the backend's own
            continue
        runs.append(name)
    return runs


def cpu_methods(q, k, v, causal: bool = False) -> dict[str, Callable[[], object]]:
    return {
        "naive": lambda: naive_attention(q, k, v, causal),
        "tiled": lambda: tiled_attention(q, k, v, causal),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    }


def _mask_name(causal: bool) -> str:
    return "causal" if causal else "full"


def _measure(device: str, methods: dict[tuple[str, bool], Callable[[], object]], n: int, d: int, heads: int,
             dtype: str, seconds: dict[str, float], peak: Callable[[Callable[[], object]], int],
             kernels: dict[bool, str]) -> list[Row]:
    return [Row(device, method, n, d, dtype, seconds[f"{method} {_mask_name(causal)}"], peak(fn), causal, heads,
                kernels[causal] if method == "sdpa" else "")
            for (method, causal), fn in methods.items()]


def cpu_rows(ns=(1024, 2048, 4096, 8192), d: int = 64, heads: int = 1, repeats: int = 3,
             threads: int | None = None, masks=(False, True)) -> list[Row]:
    """Naive, tiled and SDPA on the CPU in float32, full and causal: time and peak memory for each N.

    ``threads`` sets torch's thread count while timing. One thread is the fairest when other
    programs share the cores: a multi-threaded loop of many small operations waits at every
    operation for its slowest thread, so busy cores slow the tiled version far more than the
    others. ``None`` keeps torch's setting. (SDPA's CPU kernel keeps a scratch buffer per thread,
    so its peak memory depends on the thread count too.)
    """
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        device = f"CPU ({cpu_name()})"
        for n in ns:
            q, k, v = _qkv(n, d, heads, torch.float32, "cpu")
            methods = {(name, causal): fn for causal in masks for name, fn in cpu_methods(q, k, v, causal).items()}
            seconds = best_seconds({f"{m} {_mask_name(c)}": fn for (m, c), fn in methods.items()}, repeats)
            kernels = {causal: sdpa_kernel_name(q, k, v, causal) for causal in masks}
            rows += _measure(device, methods, n, d, heads, "float32", seconds, peak_cpu_bytes, kernels)
    finally:
        torch.set_num_threads(previous)
    return rows


def gpu_rows(ns=(1024, 2048, 4096, 8192), d: int = 64, heads: int = 16, dtype=torch.float16,
             repeats: int = 5, masks=(False, True), device: str = "cuda") -> list[Row]:
    """Naive, SDPA and the Triton kernel, full and causal: time and peak memory for each N.

    On a GPU (``device="cuda"``) the kernel runs compiled, each timing is the mean of 10 calls in
    a row between synchronisations, and memory is ``torch.cuda.max_memory_allocated``.
    ``device="cpu"`` runs the very same measurement where ``riverbank.triton_flash`` chose Triton's
    interpreter (no GPU): slow, so for small N only, but it checks this code without a GPU.
    """
    from .triton_flash import DEVICE as KERNEL_DEVICE
    from .triton_flash import triton_attention

    if device != KERNEL_DEVICE:
        raise ValueError(f"the Triton kernel runs on {KERNEL_DEVICE!r} here, not {device!r}")
    on_gpu = device == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    peak = peak_cuda_bytes if on_gpu else peak_cpu_bytes
    name = torch.cuda.get_device_name() if on_gpu else f"CPU ({cpu_name()}), Triton interpreted"
    dtype_name = str(dtype).removeprefix("torch.")
    rows = []
    for n in ns:
        q, k, v = _qkv(n, d, heads, dtype, device)
        methods = {}
        for causal in masks:
            methods |= {
                ("naive", causal): lambda c=causal: naive_attention(q, k, v, c),
                ("sdpa", causal): lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c),
                ("triton", causal): lambda c=causal: triton_attention(q, k, v, c),
            }
        seconds = best_seconds({f"{m} {_mask_name(c)}": fn for (m, c), fn in methods.items()}, repeats,
                               sync=sync, inner=10 if on_gpu else 1)
        kernels = {causal: sdpa_kernel_name(q, k, v, causal) for causal in masks}
        rows += _measure(name, methods, n, d, heads, dtype_name, seconds, peak, kernels)
    return rows


def _three_figures(x: float) -> str:
    """x to 3 significant figures, without an exponent: 0.0244, 1.63, 312."""
    if x <= 0 or not math.isfinite(x):
        return f"{x:.3g}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(x)))}f}"


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table, under a line naming the device(s).

    Columns: method, mask, N, d, heads, dtype, time (ms), TFLOP/s (``attention_flops`` over the
    time), peak memory (MB) and, for SDPA, the kernel it ran.
    """
    devices = list(dict.fromkeys(r.device for r in rows))
    lines = [f"device: {'; '.join(devices)}",
             f"{'method':<7}{'mask':<7}{'N':>6}{'d':>4}{'heads':>6} {'dtype':<8}{'ms':>9}{'TFLOP/s':>10}"
             f"{'peak MB':>9}  SDPA kernel"]
    for r in rows:
        lines.append(f"{r.method:<7}{_mask_name(r.causal):<7}{r.n:>6}{r.d:>4}{r.heads:>6} {r.dtype:<8}"
                     f"{r.seconds * 1e3:>9.2f}{_three_figures(r.tflops):>10}{r.peak_bytes / MB:>9.2f}  {r.kernel}")
    return "\n".join(lines)


def loglog_slope(ns, values) -> float:
    """Least-squares slope of log(value) against log(N): 2 for N², 1 for linear growth."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _pick(rows: list[Row], method: str, n: int, causal: bool = False) -> Row:
    return next(r for r in rows if r.method == method and r.n == n and r.causal == causal)


def _has_causal(rows: list[Row]) -> bool:
    return any(r.causal for r in rows) and any(not r.causal for r in rows)


def cpu_targets(rows: list[Row], n: int = 8192) -> list[tuple[str, float, float, bool]]:
    """(target, measured ratio, limit, met) for the CPU targets at ``n``."""
    naive, tiled, sdpa = (_pick(rows, m, n) for m in ("naive", "tiled", "sdpa"))
    checks = [
        ("tiled peak memory / naive peak memory", tiled.peak_bytes / naive.peak_bytes, 1 / 20),
        ("tiled time / naive time", tiled.seconds / naive.seconds, 1.0),
        ("tiled time / SDPA time", tiled.seconds / sdpa.seconds, 2.0),
    ]
    if _has_causal(rows):
        # Not 0.5: the loop skips the rows that see none of a key block, but masks every tile it computes.
        checks.append(("tiled causal time / tiled full time", _pick(rows, "tiled", n, True).seconds / tiled.seconds,
                       0.85))
    return [(name, ratio, limit, ratio <= limit) for name, ratio, limit in checks]


def gpu_targets(rows: list[Row], n: int = 4096) -> list[tuple[str, float, float, bool]]:
    naive, sdpa, triton_row = (_pick(rows, m, n) for m in ("naive", "sdpa", "triton"))
    checks = [
        ("triton time / SDPA time", triton_row.seconds / sdpa.seconds, 2.0),
        ("triton peak memory / naive peak memory", triton_row.peak_bytes / naive.peak_bytes, 1 / 20),
    ]
    if _has_causal(rows):
        checks.append(("triton causal time / triton full time",
                       _pick(rows, "triton", n, True).seconds / triton_row.seconds, 0.8))
    return [(name, ratio, limit, ratio <= limit) for name, ratio, limit in checks]


def _report(title: str, rows: list[Row], targets, target_n: int) -> bool:
    print(title)
    print(table(rows))
    ns = sorted({r.n for r in rows})
    for method, causal in dict.fromkeys((r.method, r.causal) for r in rows):
        peaks = [_pick(rows, method, n, causal).peak_bytes for n in ns]
        times = [_pick(rows, method, n, causal).seconds for n in ns]
        print(f"log-log slope against N, {method:<7}{_mask_name(causal):<7} memory {loglog_slope(ns, peaks):5.2f}   "
              f"time {loglog_slope(ns, times):5.2f}")
    print(f"targets at N = {target_n}:")
    ok = True
    for name, ratio, limit, met in targets:
        print(f"  {name:<40} {ratio:8.4f}  (limit {limit:.4f})  {'met' if met else 'MISSED'}")
        ok &= met
    print()
    return ok


def sdpa_report(q, k, v) -> str:
    """One line: the SDPA backends that accept these inputs, and the kernel SDPA chose, full and causal."""
    full, causal = sdpa_backends_that_run(q, k, v), sdpa_backends_that_run(q, k, v, causal=True)
    return (f"SDPA backends that accept these inputs when allowed alone: {', '.join(full)} (full), "
            f"{', '.join(causal)} (causal); SDPA chose: {sdpa_kernel_name(q, k, v)} (full), "
            f"{sdpa_kernel_name(q, k, v, True)} (causal)")


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
        print(sdpa_report(*_qkv(1024, 64, 1, torch.float32, "cpu")))
        print()
    if torch.cuda.is_available() and not args.cpu_only:
        rows = gpu_rows(repeats=args.repeats)
        ok &= _report("GPU, float16, 16 heads (batch × heads)", rows, gpu_targets(rows), 4096)
        print(sdpa_report(*_qkv(1024, 64, 16, torch.float16, "cuda")))
    elif not args.cpu_only:
        print("No CUDA GPU here: the GPU table (Triton kernel compiled, against SDPA) is skipped.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
