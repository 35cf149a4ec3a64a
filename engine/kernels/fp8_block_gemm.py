"""FP8 GEMM with block-wise scales (Triton): the HF ``fp8`` format of DeepSeek-V3 / Qwen3-FP8.

The weight [N, K] is e4m3 with one fp32 scale per 128x128 tile; the activations are quantized
per token and per 128-wide slice of K (``fp8_quant.quantize_rows(group=128)``, what those
checkpoints' ``activation_scheme: dynamic`` means). ``torch._scaled_mm``'s row-wise mode takes
one scale per row and column of the product, not one per K slice, so before this kernel the
format was dequantized to bf16 at load (bf16's memory and speed). Here each program owns a
BLOCK_M x BLOCK_N tile of the output and walks K one 128-wide slice at a time: an FP8 tensor-core
product of the two slices, scaled by the activation rows' slice scales and the weight tile's
scale, added to an fp32 accumulator; bias, then one rounding to the output dtype.

Programs are ordered in groups of GROUP_M row tiles so neighbours share weight tiles in L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SCALE_BLOCK = 128  # the format's tile, and this kernel's K step


@triton.jit
def _block_gemm(a_ptr, as_ptr, b_ptr, bs_ptr, bias_ptr, c_ptr, M, N, K, a_groups, b_groups,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = m < M, n < N
    a_ptrs = a_ptr + m[:, None].to(tl.int64) * K + k[None, :]
    b_ptrs = b_ptr + n[None, :].to(tl.int64) * K + k[:, None]  # the weight [N, K] as [K, N]
    as_ptrs = as_ptr + m.to(tl.int64) * a_groups
    bs_ptrs = bs_ptr + (n // BLOCK_K) * b_groups
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = k < K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        a_s = tl.load(as_ptrs + kb, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptrs + kb, mask=n_ok, other=0.0)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + m[:, None].to(tl.int64) * N + n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def block_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
               weight_scale: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``xq`` e4m3 [M, K] with ``x_scale`` [M, ceil(K/128)] times ``weight`` e4m3 [N, K] with
    ``weight_scale`` [ceil(N/128), ceil(K/128)], transposed (+ ``bias``): [M, N] ``out_dtype``."""
    m, k = xq.shape
    n = weight.shape[0]
    assert weight.shape[1] == k and weight.is_contiguous() and xq.is_contiguous()
    groups = triton.cdiv(k, SCALE_BLOCK)
    assert x_scale.shape == (m, groups) and weight_scale.shape == (triton.cdiv(n, SCALE_BLOCK),
                                                                   groups)
    out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    block_m = min(128, max(16, triton.next_power_of_2(m)))
    block_n = 128
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _block_gemm[grid](xq, x_scale, weight, weight_scale, bias if bias is not None else out, out,
                      m, n, k, groups, groups, HAS_BIAS=bias is not None, BLOCK_M=block_m,
                      BLOCK_N=block_n, BLOCK_K=SCALE_BLOCK, GROUP_M=8,
                      num_warps=8 if block_m >= 128 else 4, num_stages=3)
    return out
