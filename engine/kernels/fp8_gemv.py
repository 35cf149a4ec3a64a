"""Matrix-vector product for one-token decode steps over FP8 (e4m3) weights (Triton).

The FP8 twin of engine/kernels/gemv.py. A batch-1 decode step is weight reads, and an FP8
weight is half the bytes of a bf16 one, but ``torch._scaled_mm`` needs FP8 on both sides: the
one activation row would be quantized (several small kernels) and padded to 16 rows for a
GEMM that is then mostly padding. Here the activation stays in its dtype and each weight byte is
widened to fp32 in registers: no activation quantization, no padding, one kernel.

With one scale per output row (per channel, or a per-tensor scale widened to rows at load),
``y[n] = s[n] * sum_k w[n, k] x[k]``: the scale factors out of the sum and is applied once per
output, then the bias, then one rounding to the activation dtype. Block-wise weights (one scale
per 128x128 tile, the HF ``fp8`` format) scale each 128-wide slice of the sum by its tile's
scale: the program's K tile is viewed as [BLOCK_N, BLOCK_K / 128, 128], summed over the last
axis, and those partial sums are scaled. Tiles: the same bytes per load as the bf16 kernel
(BLOCK_N x BLOCK_K bytes = 8 KB). ``K`` is a compile-time constant and ``UNROLL`` tiles are
loaded back to back before the first is used: a run-time loop waits for each tile before it
asks for the next, and with a 1-byte weight a program has too few bytes in flight for the
narrow projections (the sweep in benchmarks/fp8_gemv_bench.py picks the defaults).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl
from engine.kernels.fused_ops import silu_times

BLOCK_N = 8
BLOCK_K = 1024
UNROLL = 1
SCALE_BLOCK = 128  # the tile of the block-wise format


@triton.jit
def _fp8_gemv(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, N, K: tl.constexpr, scale_cols,
              HAS_BIAS: tl.constexpr, BLOCKWISE: tl.constexpr, EVEN: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr,
              UNROLL: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = w_ptr + n[:, None].to(tl.int64) * K
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    y = _tiled_rows(x_ptr, rows, scale_ptr, n, n_ok, K, scale_cols, BLOCKWISE, EVEN,
                    BLOCK_N, BLOCK_K, SCALE_BLOCK, UNROLL, GATED)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    if not BLOCKWISE:
        y = y * tl.load(scale_ptr + n, mask=n_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _tiled_rows(x_ptr, rows, scale_ptr, n, n_ok, K: tl.constexpr, scale_cols,
                BLOCKWISE: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr, UNROLL: tl.constexpr,
                GATED: tl.constexpr):
    """The rows' products with x, K tile by tile (the block-wise scales applied per slice)."""
    if BLOCKWISE:
        SPLIT: tl.constexpr = BLOCK_K // SCALE_BLOCK
        acc = tl.zeros([BLOCK_N, SPLIT], dtype=tl.float32)
        scale_rows = scale_ptr + (n // SCALE_BLOCK)[:, None] * scale_cols
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k_outer in range(0, K, BLOCK_K * UNROLL):
        for u in tl.static_range(UNROLL):
            k0 = k_outer + u * BLOCK_K
            k = k0 + tl.arange(0, BLOCK_K)
            if EVEN:
                w = tl.load(rows + k[None, :])
            else:
                w = tl.load(rows + k[None, :], mask=n_ok[:, None] & (k < K)[None, :], other=0.0)
            if GATED:  # x holds [gate | up]; the input is SiLU(gate) * up
                x = silu_times(tl.load(x_ptr + k, mask=k < K, other=0.0),
                               tl.load(x_ptr + K + k, mask=k < K, other=0.0))
            elif EVEN:
                x = tl.load(x_ptr + k)
            else:
                x = tl.load(x_ptr + k, mask=k < K, other=0.0)
            prod = w.to(tl.float32) * x.to(tl.float32)[None, :]
            if BLOCKWISE:
                part = tl.sum(tl.reshape(prod, [BLOCK_N, SPLIT, SCALE_BLOCK]), axis=2)
                kb = k0 // SCALE_BLOCK + tl.arange(0, SPLIT)
                s = tl.load(scale_rows + kb[None, :],
                            mask=n_ok[:, None] & (kb < scale_cols)[None, :], other=0.0)
                acc += part * s
            else:
                acc += prod
    return tl.sum(acc, axis=1)


def applies(weight: torch.Tensor, scale: torch.Tensor, blockwise: bool) -> bool:
    """An e4m3 weight [N, K], row-major, with fp32 scales: one per row ([N] in any shape), or
    block-wise [ceil(N/128), ceil(K/128)] row-major (``blockwise``)."""
    if weight.dtype != torch.float8_e4m3fn or not weight.is_contiguous() or weight.dim() != 2:
        return False
    n, k = weight.shape
    if scale.dtype != torch.float32 or not scale.is_contiguous():
        return False
    if blockwise:
        return scale.shape == (triton.cdiv(n, SCALE_BLOCK), triton.cdiv(k, SCALE_BLOCK))
    return scale.numel() == n


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
             bias: torch.Tensor | None = None, blockwise: bool = False,
             block_n: int = BLOCK_N, block_k: int = BLOCK_K, num_warps: int = 4,
             unroll: int = UNROLL, gated: bool = False) -> torch.Tensor:
    """``x`` [1, K] times the dequantized ``weight`` [N, K] transposed (+ ``bias``), as [1, N]
    in ``x``'s dtype (``applies`` must hold); ``gated``: ``x`` is [1, 2K], gate then up, and
    the input is SiLU(gate) * up (as engine/kernels/gemv.py). ``block_*`` / ``num_warps`` /
    ``unroll``: for fp8_gemv_bench."""
    n, k = weight.shape
    assert x.shape == (1, k * (2 if gated else 1)), (x.shape, weight.shape)
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    unroll = max(1, min(unroll, triton.cdiv(k, block_k)))
    even = n % block_n == 0 and k % (block_k * unroll) == 0
    _fp8_gemv[(triton.cdiv(n, block_n),)](
        x.contiguous(), weight, scale, bias if bias is not None else scale, out, n, k,
        scale.shape[-1] if blockwise else 1, HAS_BIAS=bias is not None, BLOCKWISE=blockwise,
        EVEN=even, BLOCK_N=block_n, BLOCK_K=block_k, SCALE_BLOCK=SCALE_BLOCK, UNROLL=unroll,
        GATED=gated, num_warps=num_warps, **pdl.launch(x.device))
    return out
