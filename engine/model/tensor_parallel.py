"""Tensor parallelism applied from outside the model definition, as gpt-fast does.

Column-parallel q/k/v and gate/up (each rank keeps its heads / its slice of the FFN),
row-parallel o_proj and down_proj followed by an all-reduce, and a vocab-parallel LM head whose
logits are all-gathered. The embedding stays replicated. Works with gloo (CPU) and NCCL.
A MoE block is sharded by engine/model/moe_parallel.py (experts' intermediate dimension, or
whole experts with ``ep``) and followed by one all-reduce, its shared expert's included.

Head slices are contiguous, so a rank's KV cache holds heads
``[rank * kv_heads / tp, (rank + 1) * kv_heads / tp)`` — the slice a decode rank pulls.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.linear import Linear
from engine.model.layers.moe import SparseMoeBlock
from engine.model.llama import LlamaForCausalLM
from engine.model.moe_parallel import check_moe_parallel, shard_experts


def check_tp_size(config: ModelConfig, tp_size: int, ep_size: int = 1) -> None:
    check_moe_parallel(config, tp_size, ep_size)
    problems = []
    names = ["num_key_value_heads", "num_attention_heads", "vocab_size"]
    if config.moe is None or config.moe.dense_layers:
        names.append("intermediate_size")
    for name in names:
        if getattr(config, name) % tp_size:
            problems.append(f"{name}={getattr(config, name)}")
    if problems:
        raise ValueError(
            f"tensor parallel size {tp_size} must divide {', '.join(problems)} "
            f"(valid sizes divide num_key_value_heads={config.num_key_value_heads})"
        )


def _shard(linear: Linear, dim: int, rank: int, world: int) -> None:
    """Keep this rank's slice of a weight (and of an FP8 weight's per-row scales)."""
    with torch.no_grad():
        w = linear.weight.detach().chunk(world, dim=dim)[rank].clone()
        linear.weight = nn.Parameter(w, requires_grad=False)
        if linear.bias is not None and dim == 0:
            b = linear.bias.detach().chunk(world)[rank].clone()
            linear.bias = nn.Parameter(b, requires_grad=False)
        scale = getattr(linear, "weight_scale", None)  # FP8 on CUDA: one per row, [1, out]
        if scale is not None and dim == 0:
            s = scale.detach().chunk(world, dim=1)[rank].clone()
            linear.weight_scale = nn.Parameter(s, requires_grad=False)
        tiles = getattr(linear, "weight_scale_inv", None)  # FP8 block-wise: one per 128x128
        if tiles is not None:
            part = linear.weight.shape[dim]
            if part % 128:
                raise ValueError(f"tensor parallel size {world} cuts the 128x128 FP8 scale tiles "
                                 f"of a {tuple(linear.weight.shape)} shard (needs a multiple of "
                                 "128 along the split)")
            t = tiles.detach()[(slice(None),) * dim + (slice(rank * part // 128,
                                                             (rank + 1) * part // 128),)]
            linear.weight_scale_inv = nn.Parameter(t.contiguous(), requires_grad=False)
    if dim == 0:
        linear.out_features //= world
    else:
        linear.in_features //= world


def _all_reduce_hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(output)
    return output


def _all_gather_last_dim_hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(output) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, output.contiguous())
    return torch.cat(parts, dim=-1)


def _shard_mlp(mlp, rank: int, world: int) -> None:
    _shard(mlp.gate_proj, 0, rank, world)
    _shard(mlp.up_proj, 0, rank, world)
    _shard(mlp.down_proj, 1, rank, world)


def apply_tensor_parallel(model: LlamaForCausalLM, rank: int, world: int, ep: int = 1) -> None:
    """Shard ``model`` in place for ``rank`` of ``world`` (``ep`` expert groups among them);
    the process group must exist."""
    if world == 1:
        return
    check_tp_size(model.config, world, ep)
    for layer in model.model.layers:
        attn = layer.self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            _shard(proj, 0, rank, world)
        _shard(attn.o_proj, 1, rank, world)
        attn.o_proj.register_forward_hook(_all_reduce_hook)
        attn.num_heads //= world
        attn.num_kv_heads //= world
        mlp = layer.mlp
        if isinstance(mlp, SparseMoeBlock):
            shard_experts(mlp, rank, world, ep)
            if mlp.shared_expert is not None:
                _shard_mlp(mlp.shared_expert, rank, world)
            mlp.register_forward_hook(_all_reduce_hook)
        else:
            _shard_mlp(mlp, rank, world)
            mlp.down_proj.register_forward_hook(_all_reduce_hook)
    # The head gets its own vocab slice (this also unties it from the replicated embedding).
    _shard(model.lm_head, 0, rank, world)
    model.lm_head.register_forward_hook(_all_gather_last_dim_hook)
