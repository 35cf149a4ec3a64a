"""FP8 GEMM for decode batches, 2 to 64 rows (Triton), row-wise scales as ``_scaled_mm``'s.

At 64 rows a linear is still a weight read, and cuBLASLt's FP8 kernel for it tiles the output
128 x 128: Llama-3.1-8B's q/k/v (6144 wide) is 48 tiles, the attention output 32, on an H200's
132 SMs. Measured in a CUDA graph over weight copies that outnumber the L2
(benchmarks/fp8_gemv_bench.py), it moved the weights at 0.23-0.63 of the copy rate. Here a
program owns all the rows (BLOCK_M covers M) and a narrow band of BLOCK_N output columns, and
streams that band of the weight through K with the software pipeline ``num_stages`` deep: every
SM has a band, and the activations (64 x K, 1 byte each) come from L2.

``x`` is e4m3 [M, K] with one fp32 scale per row (``fp8_quant.quantize_rows``); the weight e4m3
[N, K] with one per output row. Accumulation in fp32 by the FP8 tensor cores, both scales in
the epilogue, then bias, then one rounding to the output dtype (as ``_scaled_mm`` does).

Split-K (each band cut along K among programs, the last to arrive adding the others' partial
sums) was measured on an H200 and is not here: at 64 rows it helped only the down projection,
21.4 -> 19.9 us, ~1% of a batch-64 step (benchmarks/results/fp8_skinny_split_k_gpu.json).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl

MAX_ROWS = 64
TILES = {"block_n": 32, "block_k": 256, "num_warps": 4, "num_stages": 4}


@triton.jit
def _skinny_gemm(a_ptr, as_ptr, b_ptr, bs_ptr, bias_ptr, c_ptr, M, N, K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = m < M, n < N
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    a_ptrs = a_ptr + m[:, None].to(tl.int64) * K + k[None, :]
    b_ptrs = b_ptr + n[None, :].to(tl.int64) * K + k[:, None]  # the weight [N, K] as [K, N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = k < K - k0
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    a_s = tl.load(as_ptr + m, mask=m_ok, other=0.0)
    b_s = tl.load(bs_ptr + n, mask=n_ok, other=0.0)
    acc = acc * a_s[:, None] * b_s[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + m[:, None].to(tl.int64) * N + n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def applies(rows: int) -> bool:
    return 1 < rows <= MAX_ROWS


def skinny_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                w_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                block_n: int = TILES["block_n"], block_k: int = TILES["block_k"],
                num_warps: int = TILES["num_warps"],
                num_stages: int = TILES["num_stages"]) -> torch.Tensor:
    """``xq`` e4m3 [M, K] (M <= 64; rows past M of a padded ``xq`` are ignored by passing the
    real M through ``xq[:M]``), ``x_scale`` fp32 [>= M] one per row; ``weight`` e4m3 [N, K],
    ``w_scale`` fp32 [N] in any shape. Returns [M, N] in ``out_dtype``. ``block_*`` /
    ``num_*``: for benchmarks/fp8_gemv_bench.py."""
    m, k = xq.shape
    n = weight.shape[0]
    assert applies(m) and weight.shape[1] == k and xq.is_contiguous() and weight.is_contiguous()
    out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    _skinny_gemm[(triton.cdiv(n, block_n),)](
        xq, x_scale, weight, w_scale, bias if bias is not None else w_scale, out, m, n, k,
        HAS_BIAS=bias is not None, BLOCK_M=max(16, triton.next_power_of_2(m)),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
        **pdl.launch(xq.device))
    return out
