"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's Triton kernels.

A batch-1 decode step is about ten kernels a layer, and each is only a few microseconds of
weight reads: o_proj's FP8 GEMV takes 7.1 us for 3.9 us of bytes (benchmarks/results/README.md,
session 7). Part of the difference is the gap between kernels: a kernel's blocks are scheduled
only once the previous kernel has drained, then each block computes its addresses and waits a
memory latency for its first bytes. With PDL (``launch_pdl=True``; captured into CUDA graphs
as programmatic edges) the next kernel's grid is launched as soon as every block of the
running one has executed ``griddepcontrol.launch_dependents``, and its blocks run up to their
``griddepcontrol.wait``, which returns once the previous grid has completed and its writes are
visible. What a kernel does before its wait overlaps the previous kernel's tail.

The contract for a kernel launched with PDL (``PDL`` constexpr true), which keeps every result
what it is without PDL:
- ``wait_for_producer()`` before touching memory an earlier kernel writes (its outputs are not
  ready before it) and before writing anything (a buffer written here may still be read by the
  previous kernel: the caching allocator hands buffers on). Weights are nobody's output, but
  loading a GEMV's one-tile rows before its wait measured no faster (FP8 batch 1 2.89 -> 2.93
  ms on an H200, benchmarks/results/whole_rows_gpu.json; prefetching rows into the L2 before
  the wait was slower still, pdl_gpu_prefetch.json), so every kernel waits first;
- ``release_dependents()`` once the main work is done, before the epilogue's stores: the next
  kernel then launches during this one's last wave, one kernel ahead;
- waiting is transitive: the previous kernel could not complete before its own wait returned.
A kernel launched without PDL (torch's, cuBLAS's) waits for everything before it as usual, and a
PDL kernel after it starts when it completes.

``ENABLED`` is read at each launch, so benchmarks flip it and capture their graphs again to
measure both in one process; ``PDSERVE_PDL=0`` turns it off for a server.

Measured on one H200 (benchmarks/pdl_bench.py, benchmarks/results/pdl_gpu.json), PDL off -> on:
batch 1 4.47 -> 4.32 ms (bf16 Llama-3.1-8B), 2.93 -> 2.88 (FP8 weights and KV), 2.93 -> 2.72
(Qwen3-30B-A3B); FP8 batch 64 5.60 -> 5.49; bf16 and MoE batch 64 unchanged. Less than the
gaps suggested: most of what a small GEMV loses is inside it. What did not pay and is not here
(pdl_gpu_release_first.json, pdl_gpu_prefetch.json):
- releasing the dependents first thing: every kernel let the next launch at once, grids queued
  on the SMs several kernels ahead, and the bf16 batch-1 step went 4.48 -> 5.49 ms;
- each weight-streaming kernel prefetching its weight rows into the L2 before its wait (the
  weights are no producer's output): 4.25 -> 5.29 ms (bf16), 2.88 -> 3.26 (FP8) at batch 1.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENABLED = os.environ.get("PDSERVE_PDL", "1") != "0"
HAS_GDC = hasattr(getattr(tl.extra, "cuda", None), "gdc_wait")
# Under Triton's interpreter (chosen when kernels are defined, so read once) nothing is launched.
_INTERPRETED = bool(os.environ.get("TRITON_INTERPRET"))


@functools.cache
def _device_supports(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` are launched with PDL now."""
    if not (ENABLED and HAS_GDC) or device.type != "cuda" or _INTERPRETED:
        return False
    return _device_supports(device.index if device.index is not None
                            else torch.cuda.current_device())


def launch(device: torch.device) -> dict:
    """Keyword arguments for a kernel launch: ``PDL`` (the kernel's constexpr) and, when on,
    Triton's ``launch_pdl``."""
    on = enabled(device)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


# Wrappers, so a kernel's source names no ``tl.extra.cuda`` attribute (Triton resolves the
# names of a kernel's source when it compiles it, even under an ``if`` on a false constexpr).
if HAS_GDC:
    @triton.jit
    def wait_for_producer():
        tl.extra.cuda.gdc_wait()

    @triton.jit
    def release_dependents():
        tl.extra.cuda.gdc_launch_dependents()
else:
    @triton.jit
    def wait_for_producer():
        pass

    @triton.jit
    def release_dependents():
        pass
