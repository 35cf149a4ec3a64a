"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's Triton kernels.

A batch-1 decode step is about ten kernels a layer, and each is only a few microseconds of
weight reads: o_proj's FP8 GEMV takes 7.1 us for 3.9 us of bytes (benchmarks/results/README.md,
session 7). Much of the difference is the gap between kernels: a kernel's blocks are scheduled
only once the previous kernel has drained, then each block computes its addresses and waits a
memory latency for its first bytes. With PDL (``launch_pdl=True``; captured into CUDA graphs
as programmatic edges) the next kernel's grid is launched as soon as every block of the
running one has executed ``griddepcontrol.launch_dependents``, and its blocks run up to their
``griddepcontrol.wait``, which returns once the previous grid has completed and its writes are
visible. What a kernel does before its wait overlaps the previous kernel's tail.

The contract for a kernel launched with PDL (``PDL`` constexpr true), which keeps every result
what it is without PDL:
- before ``wait_for_producer()``, touch no memory an earlier kernel writes, and write nothing
  (a buffer written here may still be read by the previous kernel, the caching allocator having
  handed it on); reading weights is fine, and ``prefetch_l2`` of them is the point;
- ``release_dependents()`` once the main work is done, before the epilogue's stores: the next
  kernel then launches during this one's last wave, one kernel ahead and no more. (Released at
  the start instead, every kernel let the next one launch at once, a chain of grids waited on
  the SMs, and their prefetches evicted each other's lines from the L2: on an H200 the bf16
  batch-1 step went 4.48 -> 5.49 ms, benchmarks/results/pdl_gpu_release_first.json);
- waiting is transitive: the previous kernel could not complete before its own wait returned.
A kernel launched without PDL (torch's, cuBLAS's) waits for everything before it as usual, and a
PDL kernel after it starts when it completes.

``ENABLED`` is read at each launch, so benchmarks flip it and capture their graphs again to
measure both in one process; ``PDSERVE_PDL=0`` turns it off for a server.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENABLED = os.environ.get("PDSERVE_PDL", "1") != "0"
HAS_GDC = hasattr(getattr(tl.extra, "cuda", None), "gdc_wait")


@functools.cache
def _device_supports(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` are launched with PDL now."""
    if not (ENABLED and HAS_GDC) or device.type != "cuda" or os.environ.get("TRITON_INTERPRET"):
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


PREFETCH = os.environ.get("PDSERVE_PDL_PREFETCH", "1") != "0"
LINE_BYTES = 128


def weight_launch(device: torch.device, row_elems: int, element_size: int) -> dict:
    """``launch``, plus ``prefetch_rows``' constexprs (``PREFETCH``, ``LINES``,
    ``LINE_ELEMS``) for a kernel that streams weight rows of ``row_elems`` elements of
    ``element_size`` bytes."""
    flags = launch(device)
    flags["PREFETCH"] = flags["PDL"] and PREFETCH
    flags["LINE_ELEMS"] = LINE_BYTES // element_size
    flags["LINES"] = triton.next_power_of_2(triton.cdiv(row_elems, flags["LINE_ELEMS"]))
    return flags


@triton.jit
def prefetch_l2(ptrs):
    """Ask the L2 for the 128-byte lines at ``ptrs`` without waiting for them."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def prefetch_rows(row_ptrs, row_elems, LINES: tl.constexpr, LINE_ELEMS: tl.constexpr):
    """Prefetch whole rows into the L2, one address a line: ``row_ptrs`` [R] point at the rows'
    starts, each ``row_elems`` long (``weight_launch`` gives LINES and LINE_ELEMS). Done before
    ``wait_for_producer`` by a weight-streaming kernel, so its bytes are on their way while the
    previous kernel drains."""
    offsets = tl.minimum(tl.arange(0, LINES) * LINE_ELEMS, row_elems - 1)
    prefetch_l2(row_ptrs[:, None] + offsets[None, :])
