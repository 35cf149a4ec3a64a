"""Mixture-of-experts GGUF files: llama.cpp's ``qwen3moe``, ``qwen2moe`` and ``llama`` with
experts (Mixtral). The MoE fields of the config, and the expert tensors under the model's names.

llama.cpp's converter stacks each layer's experts into one tensor per projection:
``blk.N.ffn_gate_exps`` and ``ffn_up_exps`` [E, I, H], ``ffn_down_exps`` [E, H, I] (numpy order,
as ``gguf_file`` reverses ggml's), the router ``ffn_gate_inp`` [E, H], and Qwen2-MoE's shared
expert as ``ffn_{gate,up,down}_shexp`` with its gate ``ffn_gate_inp_shexp`` [H]. The model keeps
gate and up side by side (``mlp.experts.gate_up_proj`` [E, 2I, H], engine/model/layers/moe.py),
so ``join_gate_up`` concatenates a layer's two once both have been read. Older Mixtral files hold
one tensor per expert (``blk.N.ffn_gate.E.weight``); those get Mixtral's checkpoint names and
are stacked by expert_stacking.py, as a HF directory's are.

What llama.cpp does with the router's top-k probabilities is fixed per family in its code, not
written in most files: renormalised for Qwen3-MoE and Mixtral, not for Qwen2-MoE (the HF
defaults too); ``{arch}.expert_weights_norm`` overrides it where a converter wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

MOE_ARCHS = {"qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe"}  # and llama with experts
_RENORMALIZE = {"qwen3_moe": True, "qwen2_moe": False, "mixtral": True}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_LAYER_NAMES = {  # the model's parameter names (the stacked experts' have no ".weight")
    "ffn_gate_inp": "mlp.gate.weight",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_exps": "mlp.experts.gate_proj",  # joined with up by join_gate_up
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp": "mlp.shared_expert.down_proj.weight",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate.weight",
}
_PER_EXPERT_RE = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight")
_MIXTRAL_PROJ = {"gate": "w1", "up": "w3", "down": "w2"}


def model_type(arch: str, field: Callable[[str], Any]) -> str | None:
    """The HF model_type of a MoE file, or None for a dense one."""
    if arch in MOE_ARCHS:
        return MOE_ARCHS[arch]
    if arch == "llama" and (field("llama.expert_count") or 0) > 0:
        return "mixtral"
    return None


def moe_fields(arch: str, model_type: str, field: Callable[[str], Any],
               tensor_names: set[str], num_layers: int) -> dict[str, Any]:
    """The config.json keys ``moe_config.moe_config_from_hf`` reads, from the file's metadata.
    A layer without a router (``ffn_gate_inp``) keeps its dense MLP."""
    num_experts = int(field(f"{arch}.expert_count"))
    top_k = int(field(f"{arch}.expert_used_count"))
    norm = field(f"{arch}.expert_weights_norm")
    renormalize = _RENORMALIZE[model_type] if norm is None else bool(norm)
    if model_type == "mixtral":
        if not renormalize:
            raise ValueError("this Mixtral GGUF says expert_weights_norm=false; Mixtral's "
                             "routing always renormalises the top-k weights")
        return {"num_local_experts": num_experts, "num_experts_per_tok": top_k,
                "intermediate_size": int(field("llama.feed_forward_length"))}
    dense = [i for i in range(num_layers) if f"blk.{i}.ffn_gate_inp.weight" not in tensor_names]
    return {
        "num_experts": num_experts, "num_experts_per_tok": top_k,
        "moe_intermediate_size": int(field(f"{arch}.expert_feed_forward_length")),
        "norm_topk_prob": renormalize, "mlp_only_layers": dense,
        "shared_expert_intermediate_size": int(
            field(f"{arch}.expert_shared_feed_forward_length") or 0),
    }


def hf_name(gguf_name: str) -> str | None:
    """The model's name for an expert, router or shared-expert tensor, or None."""
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    m = _PER_EXPERT_RE.fullmatch(gguf_name)
    if m:
        layer, proj, expert = m.groups()
        return (f"model.layers.{layer}.block_sparse_moe.experts.{expert}."
                f"{_MIXTRAL_PROJ[proj]}.weight")
    return None


def join_gate_up(tensors: Iterable[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Each layer's stacked gate and up experts as one ``gate_up_proj`` [E, 2I, H]; the shared
    expert's gate [H] as the [1, H] linear it is. Everything else passes through."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        if name.endswith(("mlp.experts.gate_proj", "mlp.experts.up_proj")):
            prefix, proj = name.rsplit(".", 1)
            parts = pending.setdefault(prefix, {})
            parts[proj] = tensor
            if len(parts) == 2:
                del pending[prefix]
                yield prefix + ".gate_up_proj", torch.cat([parts["gate_proj"], parts["up_proj"]],
                                                          dim=1)
            continue
        if name.endswith("mlp.shared_expert_gate.weight") and tensor.dim() == 1:
            tensor = tensor.reshape(1, -1)
        yield name, tensor
    if pending:
        prefix, parts = next(iter(pending.items()))
        raise ValueError(f"GGUF file has {sorted(parts)} but not both gate and up experts "
                         f"under {prefix!r}")
