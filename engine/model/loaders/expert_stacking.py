"""Checkpoint expert tensors -> the stacked [E, ...] parameters of engine/model/layers/moe.py.

Checkpoints store one tensor per expert and projection: Qwen-MoE
``mlp.experts.{e}.{gate,up,down}_proj.weight``, Mixtral
``block_sparse_moe.experts.{e}.{w1,w3,w2}.weight`` (gate, up, down) and
``block_sparse_moe.gate.weight``. They are gathered per layer and stacked once a layer's set is
complete, so at most one layer's experts wait in memory. Tensors already stacked (a
transformers 5 in-memory state dict) and all other tensors pass through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from engine.model.config import ModelConfig

_EXPERT = re.compile(r"^(?P<prefix>.*\.)(?:mlp|block_sparse_moe)\.experts\.(?P<e>\d+)\."
                     r"(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
_ROLE = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up",
         "down_proj": "down", "w2": "down"}


def stack_experts(tensors: Iterable[tuple[str, torch.Tensor]],
                  config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors under the model's names, experts stacked per layer."""
    if config.moe is None:
        yield from tensors
        return
    num_experts = config.moe.num_experts
    pending: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    for name, tensor in tensors:
        if ".block_sparse_moe.gate." in name:  # Mixtral's router
            name = name.replace(".block_sparse_moe.", ".mlp.")
        match = _EXPERT.match(name)
        if match is None:
            yield name, tensor
            continue
        prefix = match["prefix"] + "mlp.experts."
        parts = pending.setdefault(prefix, {})
        key = (_ROLE[match["proj"]], int(match["e"]))
        if key in parts:
            raise ValueError(f"checkpoint has {name!r} twice")
        parts[key] = tensor
        if len(parts) == 3 * num_experts:
            del pending[prefix]
            yield from _stacked(prefix, parts, num_experts)
    if pending:
        prefix, parts = next(iter(pending.items()))
        raise ValueError(f"checkpoint has {len(parts)} of {3 * num_experts} expert tensors "
                         f"under {prefix!r} (expected gate, up and down for each expert)")


def _stacked(prefix: str, parts: dict[tuple[str, int], torch.Tensor],
             num_experts: int) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        gate_up = torch.stack([torch.cat([parts["gate", e], parts["up", e]])
                               for e in range(num_experts)])
        down = torch.stack([parts["down", e] for e in range(num_experts)])
    except KeyError as e:
        raise ValueError(f"checkpoint lacks expert tensor {e.args[0]} under {prefix!r}") from None
    yield prefix + "gate_up_proj", gate_up
    yield prefix + "down_proj", down
