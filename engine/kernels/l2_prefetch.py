"""Bringing the next projection's weight into the L2 while a latency-bound kernel runs.

At batch 1 a decode layer alternates weight streams (the GEMVs, at 0.55-0.92 of the copy
rate) with kernels that read almost nothing from HBM: add + RMSNorm (one program at batch 1),
decode attention over ~1 MB of KV and its merge. While those run, HBM idles: 15-17 us a layer
of a ~55-80 us layer (benchmarks/results/README.md, sessions 7-11). Here such a kernel asks
the L2 for the weight the next GEMV will stream, with Hopper's bulk prefetch
(``cp.async.bulk.prefetch.L2``: one instruction a chunk, issued to the SM's TMA unit, no
registers, nothing waited for), so that GEMV starts on L2 hits:

- decode attention prefetches o_proj's whole weight (16.8 MB in Llama-3.1-8B's FP8 and in
  Qwen3-30B-A3B's bf16 attention output: a third of the H100/H200's 50 MB L2), spread over its
  programs;
- add + RMSNorm prefetches the first ``NORM_BYTES`` of the weight its output goes into
  (q/k/v, gate_up, a MoE block's router gate), from extra programs that do nothing else, so
  the requests leave from many SMs and not from the one program a batch-1 norm has.

The GEMVs read their weight in row order, first programs first, so the first bytes are the
first needed. Nothing here changes a result: a prefetch only moves bytes into the cache.
Different from what engine/kernels/pdl.py measured slower (each GEMV prefetching its own rows
before its PDL wait, per 128-byte line from every thread): this runs one kernel earlier, in
kernels whose HBM time is otherwise idle, a few instructions a program.

``ENABLED`` is read at each launch (benchmarks/pdl_bench.py --switch l2_prefetch captures the
graphs with it on, off and on again); ``PDSERVE_L2_PREFETCH=1`` turns it on for a server.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from engine.kernels import pdl

# Off until measured on a GPU (benchmarks/pdl_bench.py --switch l2_prefetch): written in a
# session the device lent nothing to; compiled for sm_90 through ptxas only.
ENABLED = os.environ.get("PDSERVE_L2_PREFETCH", "0") == "1"
CHUNK = 16384  # bytes per bulk prefetch instruction (a multiple of 16, as the PTX wants)
NORM_BYTES = 8 << 20  # of the next weight, from the norm kernel (~2 us of HBM at 4 TB/s)
NORM_PROGRAMS = 64  # extra programs of the norm kernel that only prefetch
_NO_PLAN = {"PF_SLOTS": 0, "PF_CHUNK": CHUNK}


@functools.cache
def _l2_bytes_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).L2_cache_size


def _l2_bytes(device: torch.device) -> int:
    return _l2_bytes_of(device.index if device.index is not None else torch.cuda.current_device())


def applies(device: torch.device) -> bool:
    """Hopper's bulk prefetch exists (pdl.enabled checks sm_90+, CUDA, not interpreted)."""
    return ENABLED and pdl.enabled(device)


def plan(weight: torch.Tensor | None, nbytes: int | None, programs: int, num_warps: int,
         placeholder: torch.Tensor) -> tuple[tuple, dict]:
    """((pointer, byte count), constexprs) of ``prefetch_share`` for a kernel of ``programs``
    programs of ``num_warps`` warps that prefetches the first ``nbytes`` (None: all) of
    ``weight``. With nothing to do (no weight, not applicable), ``PF_SLOTS`` is 0 and the
    kernel skips it; ``placeholder`` (any tensor of the kernel's device) stands in for the
    pointer."""
    if (weight is None or programs <= 0 or not applies(weight.device)
            or not weight.is_contiguous()):
        return (placeholder, 0), _NO_PLAN
    total = weight.numel() * weight.element_size()
    # At most half the L2: more would evict its own first bytes before they are read.
    nbytes = min(total, nbytes if nbytes is not None else total, _l2_bytes(weight.device) // 2)
    nbytes = nbytes // 16 * 16
    if nbytes <= 0:
        return (placeholder, 0), _NO_PLAN
    per_program = triton.cdiv(triton.cdiv(nbytes, CHUNK), programs)
    # At least a slot a thread: a tensor smaller than the program's threads is replicated
    # across them, and every copy would issue its prefetch.
    slots = max(triton.next_power_of_2(per_program), 32 * num_warps)
    return (weight, nbytes), {"PF_SLOTS": slots, "PF_CHUNK": CHUNK}


@triton.jit
def prefetch_share(ptr, nbytes, program, programs, SLOTS: tl.constexpr, CHUNK: tl.constexpr):
    """This program's chunks of the first ``nbytes`` at ``ptr`` (``program``, ``program +
    programs``, ...), each asked of the L2 without waiting for it."""
    base = ptr.to(tl.pointer_type(tl.uint8))
    chunk = program + tl.arange(0, SLOTS).to(tl.int64) * programs
    offset = chunk * CHUNK
    size = tl.maximum(tl.minimum(nbytes - offset, CHUNK), 0).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; "
        "mov.u32 $0, 0; }",
        "=r,l,r", [base + offset, size], dtype=tl.int32, is_pure=False, pack=1)
