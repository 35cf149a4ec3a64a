"""Sharding a MoE block's experts across the tensor-parallel ranks: TP, EP, or both.

The ranks that run attention tensor-parallel (``world`` of them) also share each MoE layer.
``ep`` (dividing ``world``) splits the experts into ``ep`` contiguous groups; the
``world // ep`` ranks of one group each keep a slice of every one of its experts' intermediate
dimension (plain TP for MoE when ``ep == 1``, pure expert parallelism when ``ep == world``).
Tokens are already replicated on every rank after attention's all-reduce (the "all-gather" of
dispatch costs nothing here), each rank computes its experts' share for every token, and the
block's one all-reduce (engine/model/tensor_parallel.py) combines routed and shared experts.
The KV cache is attention's alone, so its layout does not depend on ``ep``.

Rank ``r`` is in expert group ``r // (world // ep)`` and holds intermediate slice
``r % (world // ep)``. A data-parallel attention (ranks with different requests, where the
dispatch really gathers tokens) would change only this mapping and the combine.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.moe import SparseMoeBlock


def check_moe_parallel(config: ModelConfig, world: int, ep: int) -> None:
    """A clear error when ``world`` ranks with ``ep`` expert groups cannot split the model."""
    if ep < 1 or world % ep:
        raise ValueError(f"expert parallel size {ep} must divide the tensor parallel size "
                         f"{world} (the experts are split across the tensor-parallel ranks)")
    moe = config.moe
    if moe is None:
        if ep > 1:
            raise ValueError(f"expert parallelism needs a mixture-of-experts model; "
                             f"{config.model_type} is dense")
        return
    problems = []
    if moe.num_experts % ep:
        problems.append(f"ep={ep} must divide num_experts={moe.num_experts}")
    for name in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        size, parts = getattr(moe, name), (world // ep if name.startswith("moe") else world)
        if size % parts:
            problems.append(f"{parts} shards must divide {name}={size}")
    if problems:
        raise ValueError("cannot split the experts: " + "; ".join(problems))


def shard_experts(block: SparseMoeBlock, rank: int, world: int, ep: int) -> None:
    """Keep this rank's experts and its slice of their intermediate dimension (in place)."""
    experts = block.experts
    shards = world // ep
    group, part = rank // shards, rank % shards
    num_local = block.num_experts // ep
    with torch.no_grad():
        keep = slice(group * num_local, (group + 1) * num_local)
        gate, up = experts.gate_up_proj.detach()[keep].chunk(2, dim=1)
        # gate and up are sliced separately so each rank keeps matching rows of both.
        gate_up = torch.cat([gate.chunk(shards, dim=1)[part], up.chunk(shards, dim=1)[part]],
                            dim=1).contiguous()
        down = experts.down_proj.detach()[keep].chunk(shards, dim=2)[part].contiguous()
    experts.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
    experts.down_proj = nn.Parameter(down, requires_grad=False)
    experts.expert_start = group * num_local
