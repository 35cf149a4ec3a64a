"""Dynamic per-token FP8 (e4m3) quantization of activations in one kernel (Triton).

``torch._scaled_mm`` multiplies two FP8 operands, so before each FP8 linear the activations are
quantized, one scale per row: ``s = max(|x|) / 448``, ``q = clamp(x / s)`` in e4m3. In torch
that is abs, amax, clamp, divide, divide, clamp, cast and a pad to 16 rows: eight kernels and
several full passes over fp32 copies of the activations, per linear (at 4k prefill tokens, more
memory traffic than the FP8 GEMM's own operand reads). Here one program per row reads the row
once (twice if it is wider than ONE_PASS_COLS: the second read hits cache), and writes its FP8
row and scale; rows past the input's (the padding ``_scaled_mm`` gets) come out as zeros.

Bit-for-bit what ``fp8_linear.quantize_per_row`` computes: the same fp32 amax, IEEE-rounded
divisions (``div_rn``; Triton's ``/`` on fp32 is approximate), round-to-nearest-even casts.

``group`` > 0 quantizes each ``group``-wide slice of a row with its own scale (scales
[rows, K / group]): the activations of the block-wise 128x128 FP8 GEMM (fp8_block_gemm.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl
from engine.kernels.fused_ops import silu_times

FP8 = torch.float8_e4m3fn
ONE_PASS_COLS = 16384  # rows up to this wide are held in registers: one read


@triton.jit
def _quant_rows(x_ptr, q_ptr, s_ptr, M, K, FP8_MAX: tl.constexpr, ONE_PASS: tl.constexpr,
                BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    in_cols = tl.where(row < M, K, 0)  # rows past M: the zero padding
    base = row.to(tl.int64) * K
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py): it waits for our stores
        pdl.release_dependents()
    if ONE_PASS:
        cols = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + cols, mask=cols < in_cols, other=0.0).to(tl.float32)
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12), FP8_MAX)
        q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + base + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
        tl.store(s_ptr + row, scale)
    else:
        amax = 0.0
        for c0 in range(0, K, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + cols, mask=cols < in_cols, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=0))
        scale = tl.math.div_rn(tl.maximum(amax, 1e-12), FP8_MAX)
        for c0 in range(0, K, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + cols, mask=cols < in_cols, other=0.0).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
            tl.store(q_ptr + base + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
        tl.store(s_ptr + row, scale)


@triton.jit
def _quant_groups(x_ptr, q_ptr, s_ptr, M, K, groups, FP8_MAX: tl.constexpr,
                  GROUP: tl.constexpr):
    row = tl.program_id(0)
    g = tl.program_id(1)
    cols = g * GROUP + tl.arange(0, GROUP)
    base = row.to(tl.int64) * K
    in_cols = tl.where(row < M, K, 0)  # rows past M: the zero padding
    x = tl.load(x_ptr + base + cols, mask=cols < in_cols, other=0.0).to(tl.float32)
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12), FP8_MAX)
    tl.store(s_ptr + row.to(tl.int64) * groups + g, scale)
    q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + base + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)


@triton.jit
def _silu_quant_rows(x_ptr, q_ptr, s_ptr, N, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    gate = tl.load(x_ptr + row * 2 * N + cols, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * 2 * N + N + cols, mask=ok, other=0.0)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    h = silu_times(gate, up).to(tl.float32)  # rounded to the activation dtype, as silu_mul's
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(h), axis=0), 1e-12), FP8_MAX)
    q = tl.clamp(tl.math.div_rn(h, scale), -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + row * N + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(s_ptr + row, scale)


def silu_quantize_applies(gate_up: torch.Tensor) -> bool:
    return gate_up.dim() == 2 and gate_up.shape[1] // 2 <= ONE_PASS_COLS


def quantize_silu_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate_up`` [M, 2I] (gate then up) -> SiLU(gate) * up as (e4m3 [M, I], fp32 scales
    [M, 1]) in one kernel: bit for bit ``quantize_rows(fused_ops.silu_mul(gate_up))``, without
    the bf16 product's trip through memory and the second launch (``silu_quantize_applies``
    must hold)."""
    assert silu_quantize_applies(gate_up) and gate_up.is_contiguous()
    m, two_i = gate_up.shape
    n = two_i // 2
    q = torch.empty(m, n, dtype=FP8, device=gate_up.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=gate_up.device)
    block = triton.next_power_of_2(n)
    _silu_quant_rows[(m,)](gate_up, q, s, n, FP8_MAX=torch.finfo(FP8).max, BLOCK=block,
                           num_warps=min(16, max(4, block // 1024)), **pdl.launch(gate_up.device))
    return q, s


def quantize_rows(x: torch.Tensor, pad_rows_to: int = 1,
                  group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [M, K] -> (e4m3 [M', K], fp32 scales [M', 1]) with M' = M rounded up to a multiple
    of ``pad_rows_to`` (the extra rows zero); ``group``: scales [M', ceil(K / group)]."""
    assert x.dim() == 2 and x.is_contiguous()
    m, k = x.shape
    rows = -(-m // pad_rows_to) * pad_rows_to
    q = torch.empty(rows, k, dtype=FP8, device=x.device)
    fp8_max = torch.finfo(FP8).max
    if group:
        groups = triton.cdiv(k, group)
        s = torch.empty(rows, groups, dtype=torch.float32, device=x.device)
        _quant_groups[(rows, groups)](x, q, s, m, k, groups, FP8_MAX=fp8_max, GROUP=group,
                                      num_warps=1 if group <= 128 else 4)
        return q, s
    s = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    one_pass = k <= ONE_PASS_COLS
    block = triton.next_power_of_2(k) if one_pass else 4096
    _quant_rows[(rows,)](x, q, s, m, k, FP8_MAX=fp8_max, ONE_PASS=one_pass, BLOCK=block,
                         num_warps=min(16, max(4, block // 1024)), **pdl.launch(x.device))
    return q, s
