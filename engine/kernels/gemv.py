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

BLOCK_N = 8
BLOCK_K = 512


@triton.jit
def _gemv(x_ptr, w_ptr, out_ptr, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :])
        x = tl.load(x_ptr + k)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(out_ptr + n, tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty))


def applies(linear: nn.Module) -> bool:
    """Half-precision weights without bias whose shape tiles evenly."""
    out_features, in_features = linear.weight.shape
    return (linear.bias is None and linear.weight.dtype in (torch.bfloat16, torch.float16)
            and linear.weight.is_contiguous() and out_features % BLOCK_N == 0
            and in_features % BLOCK_K == 0)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` [1, K] times ``weight`` [N, K] transposed, as [1, N] (``applies`` must hold)."""
    out_features, in_features = weight.shape
    out = torch.empty(1, out_features, dtype=x.dtype, device=x.device)
    _gemv[(out_features // BLOCK_N,)](x.contiguous(), weight, out, in_features,
                                      BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4)
    return out


class DecodeLinear(nn.Linear):
    """A Linear whose one-row inputs go through the GEMV kernel (CUDA, ``applies``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1 or x.dim() != 2:
            return super().forward(x)
        return gemv(x, self.weight)
