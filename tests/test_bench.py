"""riverbank.bench: its measurements against cases whose answer is known.

Peak memory is the highest point of the running total of the profiler's raw allocation and free
records. The cases below know their answer: a sequence of allocations and frees of known sizes,
a temporary allocated and freed inside other operations and inside autograd's backward, and naive
attention's backward pass, which holds three N×N float32 matrices at once.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import record_function

from riverbank import bench
from riverbank.flash import flash_attention, naive_attention

MiB = 2**20


def test_running_peak_of_known_sequences():
    assert bench.running_peak([]) == 0
    assert bench.running_peak([5, -5, 3]) == 5
    assert bench.running_peak([1, 2, -1, 3, -2, -3]) == 5  # 1 + 2, then 2 + 3 after the first is freed
    assert bench.running_peak([-4, 2]) == 0  # freeing what was there before is not negative memory


def test_allocations_and_frees_of_known_sizes_are_recorded_in_order():
    def fn():
        a = torch.empty(1 * MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(3 * MiB, dtype=torch.uint8)
        del b, c

    changes = [nbytes for _, nbytes in bench.memory_events(fn)]
    assert changes == [1 * MiB, 2 * MiB, -1 * MiB, 3 * MiB, -2 * MiB, -3 * MiB]
    assert bench.peak_cpu_bytes(fn) == 5 * MiB


def test_a_temporary_freed_inside_an_enclosing_operation_counts():
    # Netted per operation, "outer" allocated nothing and freed 8 MiB at its start: a peak of 1 MiB.
    def fn():
        with record_function("outer"):
            with record_function("inner"):
                temporary = torch.empty(8 * MiB, dtype=torch.uint8)
                del temporary
            return torch.empty(1 * MiB, dtype=torch.uint8)

    assert bench.peak_cpu_bytes(fn) == 8 * MiB


class _ScratchInBackward(torch.autograd.Function):
    """Identity whose backward allocates, and frees, a scratch buffer of SCRATCH bytes."""

    SCRATCH = 16 * MiB

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        scratch = torch.empty(_ScratchInBackward.SCRATCH, dtype=torch.uint8)
        del scratch
        return grad.clone()


def test_a_temporary_inside_autograds_backward_counts():
    x = torch.randn(1024, requires_grad=True)  # 4 KiB; its gradient is 4 KiB more
    peak = bench.peak_cpu_bytes(lambda: _ScratchInBackward.apply(x).sum().backward())
    assert _ScratchInBackward.SCRATCH <= peak <= _ScratchInBackward.SCRATCH + 64 * 1024


@pytest.mark.parametrize("n", [512, 1024])
def test_naive_attention_backward_holds_three_n_by_n_matrices(n):
    # Backward through softmax(S) V holds P (saved), dP = dO Vᵀ and dS = P ∘ (dP − D) at once.
    d = 64
    q, k, v = (torch.randn(n, d).requires_grad_() for _ in range(3))
    peak = bench.peak_cpu_bytes(lambda: naive_attention(q, k, v).sum().backward())
    three = 3 * 4 * n * n
    assert three <= peak <= three + 3 * 4 * n * d + 1024  # plus at most the three (N, d) gradients


def test_flash_attention_forward_and_backward_grow_linearly_and_far_below_naive():
    def peak(n, attention):
        q, k, v = (torch.randn(n, 64).requires_grad_() for _ in range(3))
        return bench.peak_cpu_bytes(lambda: attention(q, k, v).sum().backward())

    flash_1k, flash_2k = peak(1024, flash_attention), peak(2048, flash_attention)
    assert flash_2k == pytest.approx(2 * flash_1k, rel=0.05)
    assert flash_2k < peak(2048, naive_attention) / 8


def test_sdpa_kernel_name_reads_the_kernel_that_ran():
    q, k, v = (torch.randn(1, 2, 128, 64) for _ in range(3))
    assert bench.sdpa_kernel_name(q, k, v) == "flash (CPU)"  # float32, 4-D: the CPU's tiled kernel
    assert bench.sdpa_kernel_name(q, k, v, causal=True) == "flash (CPU)"
    with sdpa_kernel(SDPBackend.MATH):
        assert bench.sdpa_kernel_name(q, k, v) == "math"
    assert {"flash", "math"} <= set(bench.sdpa_backends_that_run(q, k, v))
    assert "cuDNN" not in bench.sdpa_backends_that_run(q, k, v)  # a GPU backend


def test_flop_count_and_rate():
    assert bench.attention_flops(1024, 64) == 4 * 1024**2 * 64
    assert bench.attention_flops(1024, 64, heads=16, causal=True) == 16 * 2 * 1024**2 * 64
    row = bench.Row("cpu", "sdpa", 1024, 64, "float32", seconds=0.01, peak_bytes=0, causal=True, heads=2)
    assert row.tflops == pytest.approx(2 * 2 * 1024**2 * 64 / 0.01 / 1e12)
    assert bench._three_figures(0.024412) == "0.0244" and bench._three_figures(312.4) == "312"


def test_cpu_rows_time_every_method_with_and_without_the_mask():
    rows = bench.cpu_rows(ns=(128, 256), repeats=1, threads=1)
    assert {(r.method, r.causal, r.n) for r in rows} == {
        (m, c, n) for m in ("naive", "tiled", "sdpa") for c in (False, True) for n in (128, 256)}
    assert all(r.kernel == "flash (CPU)" for r in rows if r.method == "sdpa")
    assert all(r.seconds > 0 and r.peak_bytes > 0 for r in rows)
    naive = next(r for r in rows if (r.method, r.causal, r.n) == ("naive", False, 256))
    assert naive.peak_bytes == pytest.approx(2 * 4 * 256**2 + 4 * 256 * 64, rel=0.01)  # S and P, and O
    text = bench.table(rows)
    assert "TFLOP/s" in text and "causal" in text and text.count("\n") == len(rows) + 1
    names = [name for name, *_ in bench.cpu_targets(rows, n=256)]
    assert "tiled causal time / tiled full time" in names


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or importlib.util.find_spec("numpy") is None,
                    reason="needs triton, and numpy for its interpreter")
def test_the_gpu_table_code_runs_on_the_interpreter_twin():
    from riverbank import triton_flash

    device = triton_flash.DEVICE
    rows = bench.gpu_rows(ns=(64, 128), d=16, heads=2, dtype=torch.float32, repeats=1, device=device)
    assert {(r.method, r.causal) for r in rows} == {
        (m, c) for m in ("naive", "sdpa", "triton") for c in (False, True)}
    kernels = {r.kernel for r in rows if r.method == "sdpa"}
    assert kernels and "unknown" not in kernels
    pick = {(r.method, r.causal, r.n): r for r in rows}
    assert pick["triton", False, 128].peak_bytes < pick["naive", False, 128].peak_bytes
    names = [name for name, *_ in bench.gpu_targets(rows, n=128)]
    assert "triton causal time / triton full time" in names
    with pytest.raises(ValueError, match="runs on"):
        bench.gpu_rows(ns=(64,), device="cpu" if device == "cuda" else "cuda")

