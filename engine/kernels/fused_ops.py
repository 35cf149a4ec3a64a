"""Fused elementwise kernels for CUDA (Triton): residual add + RMSNorm, and SiLU(gate) * up.

Unfused, these are several full passes over the activations each (fp32 casts, pow, mean,
rsqrt, multiplies, adds): about a third of a 4k-token prefill on an H100. Each kernel here reads
its inputs once and writes its outputs once. Numerics follow the model's eager path: the norm
runs in fp32, the normalized value is rounded to the activation dtype before the weight
multiply, and the residual sum is rounded once to the activation dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import l2_prefetch, pdl


@triton.jit
def _add_rmsnorm(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, q_ptr, s_ptr, n_rows, n_cols, eps,
                 pf_ptr, pf_bytes, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                 QUANT: tl.constexpr, FP8_MAX: tl.constexpr, PDL: tl.constexpr,
                 PF_SLOTS: tl.constexpr, PF_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if PF_SLOTS > 0:  # programs past the rows only prefetch (engine/kernels/l2_prefetch.py)
        if row >= n_rows:
            l2_prefetch.prefetch_share(pf_ptr, pf_bytes, row - n_rows,
                                       tl.num_programs(0) - n_rows, PF_SLOTS, PF_CHUNK)
        else:
            _norm_row(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, q_ptr, s_ptr, row, n_cols,
                      eps, HAS_RES, BLOCK, QUANT, FP8_MAX, PDL)
    else:
        _norm_row(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, q_ptr, s_ptr, row, n_cols, eps,
                  HAS_RES, BLOCK, QUANT, FP8_MAX, PDL)


@triton.jit
def _norm_row(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, q_ptr, s_ptr, row, n_cols, eps,
              HAS_RES: tl.constexpr, BLOCK: tl.constexpr, QUANT: tl.constexpr,
              FP8_MAX: tl.constexpr, PDL: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=mask)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    normed = (xf * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
    tl.store(out_ptr + row * n_cols + cols, out, mask=mask)
    if QUANT:  # and its FP8 rows, as fp8_quant.quantize_rows makes them from ``out``
        o = tl.where(mask, out.to(tl.float32), 0.0)
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(o), axis=0), 1e-12), FP8_MAX)
        q = tl.clamp(tl.math.div_rn(o, scale), -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + row * n_cols + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + row, scale)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            residual: torch.Tensor | None = None, quantize: bool = False,
            prefetch: torch.Tensor | None = None) -> tuple:
    """Returns (norm(x + residual) * weight, x + residual); without a residual, (norm(x), x).
    ``quantize``: also the normalized rows in e4m3 with one fp32 scale each, (out, res, q
    [rows, cols], s [rows, 1]): what ``fp8_quant.quantize_rows(out)`` gives, in the same pass
    (the input of an FP8 linear, engine/model/layers/norm.py). ``prefetch``: the weight read
    next, whose first ``l2_prefetch.NORM_BYTES`` extra programs ask of the L2."""
    assert x.is_contiguous() and x.dim() == 2
    rows, cols = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    if residual is not None:
        assert residual.is_contiguous() and residual.shape == x.shape
    fp8 = torch.float8_e4m3fn
    q = torch.empty(rows, cols, dtype=fp8, device=x.device) if quantize else out
    s = torch.empty(rows, 1, dtype=torch.float32, device=x.device) if quantize else out
    extra = l2_prefetch.NORM_PROGRAMS if prefetch is not None else 0
    pf_args, pf_flags = l2_prefetch.plan(prefetch, l2_prefetch.NORM_BYTES, extra, 8, x)
    if not pf_flags["PF_SLOTS"]:
        extra = 0
    _add_rmsnorm[(rows + extra,)](x, residual if residual is not None else x, weight, out,
                                  res_out, q, s, rows, cols, eps, *pf_args,
                                  HAS_RES=residual is not None,
                                  BLOCK=triton.next_power_of_2(cols), QUANT=quantize,
                                  FP8_MAX=torch.finfo(fp8).max, num_warps=8,
                                  **pdl.launch(x.device), **pf_flags)
    return (out, res_out, q, s) if quantize else (out, res_out)


@triton.jit
def _silu_mul(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * BLOCK
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    cols = start + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    tl.store(out_ptr + row * n_cols + cols, silu_times(gate, up), mask=mask)


@triton.jit
def silu_times(gate, up):
    """SiLU(gate) * up in their dtype, rounded as eager rounds it (F.silu's result, then the
    product): the one definition for this kernel and the GEMVs that fold it into their input
    (engine/kernels/gemv.py, fp8_gemv.py)."""
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate then up, as the fused projection lays them out) -> [T, I]."""
    assert gate_up.is_contiguous() and gate_up.dim() == 2
    rows, two_i = gate_up.shape
    n = two_i // 2
    out = torch.empty(rows, n, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul[(rows, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, num_warps=4,
                                             **pdl.launch(gate_up.device))
    return out
