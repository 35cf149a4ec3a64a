"""RMSNorm, and the residual add folded into it (one fused kernel on CUDA)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        # CUDA: add_and_norm runs engine/kernels/fused_ops.rmsnorm, one read and one write of
        # the activations instead of several passes (set by the model's use_fused_kernels).
        self.fused = False
        # The linear this norm's output goes into (set by the model's use_fused_kernels): when
        # its method takes pre-quantized rows (an FP8 linear at 2-64 rows), the fused kernel
        # writes them in the same pass and hands them over (Linear.quantized_input), one
        # quantization kernel fewer a linear. Held in a tuple: a Module attribute would make
        # the linear this norm's submodule too, its weights named twice in the state dict.
        self.feeds: tuple[nn.Module, ...] = ()
        # The linear whose weight the GPU streams right after this norm (q/k/v, gate_up, a
        # MoE router's gate; a tuple for the same reason): the fused kernel asks the L2 for
        # its first bytes while the norm leaves HBM idle (engine/kernels/l2_prefetch.py).
        self.streams_next: tuple[nn.Module, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(x + residual), x + residual)``; without a residual, ``(norm(x), x)``.

        The sum is the residual stream the next block adds to, so a decoder layer passes
        (hidden, residual) along instead of adding before each norm.
        """
        if self.fused:
            from engine.kernels.fused_ops import rmsnorm

            feeds = self.feeds[0] if self.feeds else None
            prefetch = self.streams_next[0].weight if self.streams_next else None
            if feeds is not None and feeds.method.takes_quantized_rows(feeds, x):
                out, res, q, s = rmsnorm(x, self.weight, self.eps, residual, quantize=True,
                                         prefetch=prefetch)
                feeds.quantized_input = (out, q, s)
                return out, res
            return rmsnorm(x, self.weight, self.eps, residual, prefetch=prefetch)
        if residual is not None:
            x = residual + x
        return self(x), x
