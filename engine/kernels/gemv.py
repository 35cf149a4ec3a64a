"""Matrix-vector product for one-token decode steps (Triton), where cuBLAS leaves bandwidth.

A batch-1 decode step is weight reads: each projection is a GEMV. On an H100 (gemv_bench,
L2 flushed), cuBLAS took 23.2 us for the 4096 x 4096 bf16 attention output projection, which
moves 33.5 MB: half the copy bandwidth. This kernel took 21.4, and was 4-9% faster on each of
the four projection shapes; in the whole batch-1 step the change was 6.31 -> 5.91 ms. Each
program computes BLOCK_N outputs, streaming their weight rows in BLOCK_K-wide tiles and
accumulating in fp32; each output is rounded once to the activation dtype, as cuBLAS rounds it
(the order of the additions differs, so results may differ from cuBLAS in the last bit).
Inputs of more than one row keep cuBLAS."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from engine.kernels import pdl
from engine.kernels.fused_ops import silu_times

BLOCK_N = 8
BLOCK_K = 512


@triton.jit
def _gemv(x_ptr, w_ptr, out_ptr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          UNROLL: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    # UNROLL tiles asked for back to back before the first is used (K % (BLOCK_K * UNROLL) == 0)
    for k_outer in range(0, K, BLOCK_K * UNROLL):
        for u in tl.static_range(UNROLL):
            k = k_outer + u * BLOCK_K + tl.arange(0, BLOCK_K)
            w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :])
            if GATED:  # x holds [gate | up]; the input is SiLU(gate) * up
                x = silu_times(tl.load(x_ptr + k), tl.load(x_ptr + K + k))
            else:
                x = tl.load(x_ptr + k)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty))


def applies(linear: nn.Module) -> bool:
    """Half-precision weights without bias whose shape tiles evenly."""
    out_features, in_features = linear.weight.shape
    return (linear.bias is None and linear.weight.dtype in (torch.bfloat16, torch.float16)
            and linear.weight.is_contiguous() and out_features % BLOCK_N == 0
            and in_features % BLOCK_K == 0)


def gemv(x: torch.Tensor, weight: torch.Tensor, gated: bool = False, block_n: int = BLOCK_N,
         block_k: int = BLOCK_K, num_warps: int = 4, unroll: int = 1) -> torch.Tensor:
    """``x`` [1, K] times ``weight`` [N, K] transposed, as [1, N] (``applies`` must hold);
    ``gated``: ``x`` is [1, 2K], gate then up, and the input is SiLU(gate) * up (the gated
    MLP's down projection without the silu_mul kernel before it: one launch fewer).
    ``block_*`` / ``num_warps`` / ``unroll`` (must tile N and K evenly): for the benchmarks."""
    out_features, in_features = weight.shape
    assert x.shape == (1, in_features * (2 if gated else 1)), (x.shape, weight.shape)
    assert out_features % block_n == 0 and in_features % (block_k * unroll) == 0
    out = torch.empty(1, out_features, dtype=x.dtype, device=x.device)
    _gemv[(out_features // block_n,)](x.contiguous(), weight, out, in_features,
                                      BLOCK_N=block_n, BLOCK_K=block_k, UNROLL=unroll,
                                      GATED=gated, num_warps=num_warps, **pdl.launch(x.device))
    return out


class DecodeLinear(nn.Linear):
    """A Linear whose one-row inputs go through the GEMV kernel (CUDA, ``applies``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1 or x.dim() != 2:
            return super().forward(x)
        return gemv(x, self.weight)
