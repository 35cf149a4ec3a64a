"""Tile choices of the batch-1 GEMVs by weight shape, from the sweeps of
benchmarks/fp8_gemv_bench.py and benchmarks/moe_gemv_bench.py on an H200 (CUDA graph, weights
outnumbering the L2: benchmarks/results/fp8_gemv_h200.json, moe_gemv_h200.json). Triton-free,
so the layers that ask can be imported on CPU.

What the sweeps showed (FP8, Llama-3.1-8B's projections): a narrow weight (6k x 4k) wants
short rows asked for back to back (``unroll`` 8 of 512 columns, one warp: 10.5 -> 8.5 us); a
tall one (gate_up, 28k x 4k) wants a whole 4k row per program (37.9 -> 29.1 us, 96% of the
copy rate); a long input (down, 14k) is best left to the compiler's loop (unrolling it cost
registers and ran slower). bf16, the small projections of Qwen3-30B-A3B (5k x 2k q/k/v, 2k x 4k
attention output, the 128-row router gate): 4 rows of 1024 columns, 2 tiles unrolled (7.5 ->
7.0, 7.9 -> 6.5, 2.3 -> 1.8 us); larger bf16 weights keep the kernel's default tiles.
"""

from __future__ import annotations

BF16_SMALL = 16 << 20  # elements: at most this many, the small-projection tiles


def fp8_tiles(n: int, k: int) -> dict:
    """``fp8_gemv``'s block_n / block_k / num_warps / unroll for an e4m3 weight [n, k]."""
    if k > 8192:
        return {"block_n": 8, "block_k": 1024, "num_warps": 4, "unroll": 1}
    if n > 16384:
        return {"block_n": 4, "block_k": 4096, "num_warps": 4, "unroll": 1}
    return {"block_n": 4, "block_k": 512, "num_warps": 1, "unroll": 8}


def bf16_tiles(n: int, k: int) -> dict:
    """``gemv``'s block_n / block_k / num_warps / unroll for a half-precision weight [n, k]
    (``gemv.applies`` holds: n % 8 == 0, k % 512 == 0)."""
    if n * k <= BF16_SMALL and n % 4 == 0 and k % 2048 == 0:
        return {"block_n": 4, "block_k": 1024, "num_warps": 4, "unroll": 2}
    return {"block_n": 8, "block_k": 512, "num_warps": 4, "unroll": 1}


SKINNY_MAX_ROWS = 64  # engine/kernels/fp8_skinny_gemm.py's MAX_ROWS (that module needs Triton)
# On: engine_bench_fp8 on an H200, FP8 weights + FP8 KV, batch 64 at 1k context: 6.91 ms a
# step with _scaled_mm, 5.90 with this kernel (engine_gpu_h200_fp8_skinny.json).
SKINNY_GEMM = True


def skinny_tiles(n: int, k: int) -> dict | None:
    """``skinny_gemm``'s tiles for an e4m3 weight [n, k] at 2-64 rows, or None: keep
    ``_scaled_mm``. Sweep at 64 rows (quantization included, us, Llama-3.1-8B): q/k/v 17.0 ->
    13.3, o_proj 16.6 -> 11.1, gate_up 45.2 -> 36.7 (64 x 128 tiles, 5 stages), down 42.4 ->
    28.0; against 5.9 / 3.9 / 27.5 / 13.7 us of weight bytes at the copy rate."""
    if n > 16384:
        return {"block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 5}
    return {"block_n": 32, "block_k": 256, "num_warps": 4, "num_stages": 4}
