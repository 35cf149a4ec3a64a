"""The mixture-of-experts part of an architecture: how many experts, top-k, how the router's
scores become weights, and which layers keep a dense MLP.

Read from a HF ``config.json`` beside ``ModelConfig``'s fields (one frozen dataclass nested in
it, ``ModelConfig.moe``; ``None`` for dense models). The three families differ only here:

- Qwen3-MoE: softmax over all experts, top-k, renormalised when ``norm_topk_prob``.
- Qwen2-MoE: the same (``norm_topk_prob`` false in its checkpoints) plus a shared expert
  whose output is scaled by ``sigmoid(shared_expert_gate(x))``.
- Mixtral: softmax over the top-k logits, which equals softmax-then-top-k renormalised.

DeepSeek-V2/V3 adds grouped top-k, sigmoid scoring with a correction bias and a routed scaling
factor: new values of ``scoring`` here, next to MLA attention (see ``engine.model.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MOE_MODEL_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int  # experts per token
    moe_intermediate_size: int  # each routed expert's FFN width
    renormalize: bool  # divide the top-k probabilities by their sum
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one always-on expert, 0: none
    dense_layers: tuple[int, ...] = ()  # layer indices that keep the dense MLP
    scoring: str = "softmax"  # the only one built; DeepSeek-V3 would add "sigmoid"

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be in 1..num_experts "
                             f"({self.num_experts})")
        if self.scoring != "softmax":
            raise ValueError(f"unsupported router scoring {self.scoring!r} (supported: softmax)")

    def is_sparse(self, layer_idx: int) -> bool:
        return layer_idx not in self.dense_layers

    def expert_params(self, hidden_size: int) -> int:
        """Parameters of one sparse layer's experts, router and shared expert."""
        h = hidden_size
        routed = self.num_experts * 3 * h * self.moe_intermediate_size + self.num_experts * h
        shared = 3 * h * self.shared_expert_intermediate_size
        return routed + shared + (h if self.shared_expert_intermediate_size else 0)

    def active_expert_params(self, hidden_size: int) -> int:
        """What one token reads in a sparse layer: its top-k experts, router, shared expert."""
        h = hidden_size
        shared = 3 * h * self.shared_expert_intermediate_size
        return (self.top_k * 3 * h * self.moe_intermediate_size + self.num_experts * h + shared
                + (h if self.shared_expert_intermediate_size else 0))


def moe_config_from_hf(cfg: dict[str, Any], model_type: str, num_layers: int) -> MoEConfig | None:
    """The MoE fields of a HF config dict (``None`` for dense model types)."""
    if model_type not in MOE_MODEL_TYPES:
        return None
    # transformers 5 writes num_local_experts for Qwen3-MoE too (an attribute alias).
    num_experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    if model_type == "mixtral":
        return MoEConfig(num_experts=num_experts, top_k=cfg.get("num_experts_per_tok", 2),
                         moe_intermediate_size=cfg["intermediate_size"], renormalize=True)
    step = cfg.get("decoder_sparse_step", 1) or 1
    only_dense = set(cfg.get("mlp_only_layers") or [])
    dense = tuple(i for i in range(num_layers) if i in only_dense or (i + 1) % step != 0)
    return MoEConfig(
        num_experts=num_experts, top_k=cfg["num_experts_per_tok"],
        moe_intermediate_size=cfg["moe_intermediate_size"],
        renormalize=bool(cfg.get("norm_topk_prob", model_type == "qwen3_moe")),
        shared_expert_intermediate_size=(cfg.get("shared_expert_intermediate_size", 0)
                                         if model_type == "qwen2_moe" else 0),
        dense_layers=dense)


def moe_to_hf(moe: MoEConfig, model_type: str) -> dict[str, Any]:
    """The config.json keys transformers reads back as the same MoE."""
    if model_type == "mixtral":
        return {"num_local_experts": moe.num_experts, "num_experts_per_tok": moe.top_k}
    d: dict[str, Any] = {
        "num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.moe_intermediate_size, "norm_topk_prob": moe.renormalize,
        "decoder_sparse_step": 1, "mlp_only_layers": list(moe.dense_layers),
    }
    if model_type == "qwen2_moe":
        d["shared_expert_intermediate_size"] = moe.shared_expert_intermediate_size
    return d
