"""The mixture-of-experts MLP: a router picks ``top_k`` of ``num_experts`` gated MLPs per token.

Expert weights are stored stacked, as transformers 5 holds them in memory: ``gate_up_proj``
[E, 2I, H] (gate rows, then up rows) and ``down_proj`` [E, H, I]; the loaders stack a
checkpoint's per-expert tensors into them (engine/model/loaders/expert_stacking.py).

Two paths compute the same function:
- ``experts_reference`` (CPU, and the GPU tests' reference): sort the (token, k) slots by
  expert, then one pair of matmuls per expert that received any; it reads the counts on the host.
- ``engine.kernels.fused_moe`` (CUDA): the same sort done on the device into blocks of rows of
  one expert, a grouped GEMM with SiLU*mul fused, then the down GEMM scaled by the routing
  weights; fixed shapes and no host reads, so CUDA graphs capture it.
- ``engine.kernels.moe_gemv`` (CUDA, a handful of tokens: decode at small batch): routing and
  the chosen experts' GEMVs in two kernels, no sort.

With fused kernels on (CUDA), routing is one Triton kernel (engine/kernels/moe_routing.py)
instead of eager's softmax/top-k/renormalise ops, or runs inside ``moe_gemv``'s kernels.

Parallelism is applied from outside (engine/model/moe_parallel.py): a rank may hold a slice
of every expert's intermediate dimension (TP) and/or only experts
``[expert_start, expert_start + E_local)`` (EP); its output is then a partial sum that the one
all-reduce after the block completes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.linear import Linear
from engine.model.layers.mlp import GatedMLP


def route(router_logits: torch.Tensor, top_k: int,
          renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] float32, expert ids [T, k]): softmax over all experts in float32, top-k,
    optionally divided by their sum (Mixtral's softmax over the top-k logits is the same)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def experts_reference(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                      weights: torch.Tensor, ids: torch.Tensor,
                      expert_start: int = 0) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) over the experts this rank holds.

    x [T, H]; gate_up [E_local, 2I, H]; down [E_local, H, I]; weights, ids [T, k].
    """
    num_tokens, top_k = ids.shape
    num_local = gate_up.shape[0]
    local_ids = ids.flatten() - expert_start
    is_local = (local_ids >= 0) & (local_ids < num_local)
    # Slots (token * top_k + j) grouped by expert; other ranks' experts sort last.
    order = torch.argsort(local_ids.masked_fill(~is_local, num_local), stable=True)
    counts = torch.bincount(local_ids[is_local], minlength=num_local).tolist()
    flat_weights = weights.flatten()
    out = torch.zeros_like(x)
    begin = 0
    for expert, count in enumerate(counts):
        if not count:
            continue
        slots = order[begin: begin + count]
        begin += count
        tokens = slots // top_k
        gate, up = F.linear(x.index_select(0, tokens), gate_up[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, down[expert])
        out.index_add_(0, tokens, y * flat_weights[slots, None].to(y.dtype))
    return out


class Experts(nn.Module):
    """This rank's experts, stacked; ``forward`` applies them to routed tokens."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        e, h, i = num_experts, hidden_size, intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h), requires_grad=False)
        self.down_proj = nn.Parameter(torch.empty(e, h, i), requires_grad=False)
        self.expert_start = 0  # EP: the first global expert id held here
        self.num_experts = num_experts  # global count (EP holds fewer)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from engine.kernels.fused_moe import fused_experts

            return fused_experts(x, self.gate_up_proj, self.down_proj, weights, ids,
                                 self.expert_start, self.num_experts)
        return experts_reference(x, self.gate_up_proj, self.down_proj, weights, ids,
                                 self.expert_start)


class SparseMoeBlock(nn.Module):
    """Router + routed experts (+ Qwen2-MoE's sigmoid-gated shared expert); names as HF's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe = config.moe
        assert moe is not None
        h = config.hidden_size
        self.top_k, self.renormalize = moe.top_k, moe.renormalize
        self.num_experts = moe.num_experts  # global count; the router scores all of them
        self.gate = Linear(h, moe.num_experts)
        self.experts = Experts(moe.num_experts, h, moe.moe_intermediate_size)
        # CUDA kernels (use_fused_kernels): Triton routing, and moe_gemv at a handful of tokens
        self.fused_routing = False
        if moe.shared_expert_intermediate_size:
            self.shared_expert = GatedMLP(h, moe.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(h, 1)
        else:
            self.shared_expert = self.shared_expert_gate = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)
        if not self.fused_routing:
            out = self.experts(x, *route(logits, self.top_k, self.renormalize))
        else:
            from engine.kernels import moe_gemv, moe_routing

            ex = self.experts
            if moe_gemv.applies(x.shape[0]):
                out = moe_gemv.moe_gemv(x, logits, ex.gate_up_proj, ex.down_proj, self.top_k,
                                        self.renormalize, ex.expert_start)[0]
            else:
                out = ex(x, *moe_routing.route(logits, self.top_k, self.renormalize))
        if self.shared_expert is not None:
            # A partial sum under TP, like ``out``: the gate is a per-token scale, so it
            # commutes with the all-reduce that follows the block.
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out

    def fuse_projections(self) -> None:
        if self.shared_expert is not None:
            self.shared_expert.fuse_projections()

    def use_fused_kernels(self) -> None:
        self.fused_routing = True
        self.gate.use_fused_kernels()
        if self.shared_expert is not None:
            self.shared_expert.use_fused_kernels()
            self.shared_expert_gate.use_fused_kernels()
