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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl

MAX_ROWS = 64
TILES = {"block_n": 32, "block_k": 256, "num_warps": 4, "num_stages": 4}


@triton.jit
def _skinny_gemm(a_ptr, as_ptr, b_ptr, bs_ptr, bias_ptr, c_ptr, part_ptr, count_ptr, M, N,
                 K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 PDL: tl.constexpr):
    band = tl.program_id(0)
    split = tl.program_id(1)
    n = band * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = m < M, n < N
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    k_len: tl.constexpr = K // SPLIT_K  # a whole number of BLOCK_K (split_k_applies)
    k_start = split * k_len if SPLIT_K > 1 else 0
    a_ptrs = a_ptr + m[:, None].to(tl.int64) * K + k_start + k[None, :]
    b_ptrs = b_ptr + n[None, :].to(tl.int64) * K + k_start + k[:, None]  # weight [N, K] as [K, N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        k_ok = k < k_len - k0
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    a_s = tl.load(as_ptr + m, mask=m_ok, other=0.0)
    b_s = tl.load(bs_ptr + n, mask=n_ok, other=0.0)
    acc = acc * a_s[:, None] * b_s[None, :]  # the scales are linear: applied per split
    tile = m[:, None] * N + n[None, :]
    mn_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:
        # Every split leaves its partial tile in ``part`` and counts itself in; the last of a
        # band to arrive adds the others' to its own and finishes the band. The counter's
        # acq_rel orders the stores before it and the loads after it; the last one puts the
        # counter back to 0 for the next call (and the next replay of a captured graph).
        tl.store(part_ptr + split * M * N + tile, acc, mask=mn_ok)
        arrived = tl.atomic_add(count_ptr + band, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            for other in range(SPLIT_K):
                if other != split:
                    acc += tl.load(part_ptr + other * M * N + tile, mask=mn_ok, other=0.0)
            tl.atomic_xchg(count_ptr + band, 0)
            if HAS_BIAS:
                acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(c_ptr + tile, acc.to(c_ptr.dtype.element_ty), mask=mn_ok)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(c_ptr + tile, acc.to(c_ptr.dtype.element_ty), mask=mn_ok)


def applies(rows: int) -> bool:
    return 1 < rows <= MAX_ROWS


def split_k_applies(k: int, block_k: int, split_k: int) -> bool:
    """Whether K cuts into ``split_k`` equal runs of whole ``block_k`` tiles."""
    return split_k >= 1 and k % (split_k * block_k) == 0


# The split-K arrival counters, one per output band, per device: all zero between calls (the
# last split of a band puts its counter back). One stream uses them at a time: a decode step's
# linears run one after another on the engine's stream, and under PDL a kernel touches them
# only after its wait, when the previous linear has completed.
_COUNTERS: dict[torch.device, torch.Tensor] = {}
MAX_BANDS = 8192


def _counters(device: torch.device) -> torch.Tensor:
    counters = _COUNTERS.get(device)
    if counters is None:
        counters = _COUNTERS[device] = torch.zeros(MAX_BANDS, dtype=torch.int32, device=device)
    return counters


def skinny_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                w_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                block_n: int = TILES["block_n"], block_k: int = TILES["block_k"],
                num_warps: int = TILES["num_warps"],
                num_stages: int = TILES["num_stages"], split_k: int = 1) -> torch.Tensor:
    """``xq`` e4m3 [M, K] (M <= 64; rows past M of a padded ``xq`` are ignored by passing the
    real M through ``xq[:M]``), ``x_scale`` fp32 [>= M] one per row; ``weight`` e4m3 [N, K],
    ``w_scale`` fp32 [N] in any shape. Returns [M, N] in ``out_dtype``. ``split_k``: programs a
    band of output columns is cut into along K (``split_k_applies``), each with its partial
    sums in an fp32 scratch [split_k, M, N]. ``block_*`` / ``num_*`` / ``split_k``: from
    engine/kernels/gemv_tiles.py's ``skinny_tiles`` (benchmarks/fp8_skinny_bench.py)."""
    m, k = xq.shape
    n = weight.shape[0]
    assert applies(m) and weight.shape[1] == k and xq.is_contiguous() and weight.is_contiguous()
    assert split_k_applies(k, block_k, split_k), (k, block_k, split_k)
    out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    bands = triton.cdiv(n, block_n)
    if split_k > 1:
        assert bands <= MAX_BANDS
        part = torch.empty(split_k, m, n, dtype=torch.float32, device=xq.device)
        counters = _counters(xq.device)
    else:
        part = counters = out  # unused
    _skinny_gemm[(bands, split_k)](
        xq, x_scale, weight, w_scale, bias if bias is not None else w_scale, out, part,
        counters, m, n, k, HAS_BIAS=bias is not None, BLOCK_M=max(16, triton.next_power_of_2(m)),
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=num_warps,
        num_stages=num_stages, **pdl.launch(xq.device))
    return out
