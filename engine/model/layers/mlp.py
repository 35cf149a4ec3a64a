"""The gated MLP of Llama-family layers: ``down(SiLU(gate(x)) * up(x))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.layers.linear import Linear, concat_linears


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        h, i = hidden_size, intermediate_size
        self.gate_proj = Linear(h, i)
        self.up_proj = Linear(h, i)
        self.down_proj = Linear(i, h)
        self.gate_up_proj: Linear | None = None  # set by fuse_projections
        self.fused_kernels = False  # CUDA: SiLU(gate) * up fused (use_fused_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate_up = self.gate_up_proj(x)
            if self.fused_kernels:  # SiLU(gate) * up by the down projection (Linear.forward)
                return self.down_proj(gate_up, gated=True)
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse_projections(self) -> None:
        """gate and up as one linear (after any TP sharding): one GEMM instead of two."""
        self.gate_up_proj = concat_linears([self.gate_proj, self.up_proj])
        self.gate_proj = self.up_proj = None

    def use_fused_kernels(self) -> None:
        self.fused_kernels = True
        for linear in (self.gate_up_proj, self.down_proj):
            if linear is not None:
                linear.use_fused_kernels()
