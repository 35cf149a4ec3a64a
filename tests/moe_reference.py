"""Tiny random mixture-of-experts checkpoints written by HF transformers itself (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch

# Each family's tiny config: GQA, 8 experts, top-2; Qwen3-MoE with one dense layer, Qwen2-MoE
# with its shared expert, Mixtral with its block_sparse_moe checkpoint names.
TINY_MOE_CONFIGS = {
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
                      head_dim=16),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, norm_topk_prob=False),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
}


def write_tiny_moe(model_type: str, path: Path, seed: int = 0, **overrides):
    """save_pretrained of a random tiny ``model_type`` (``overrides``: config fields to change);
    returns the HF model (fp32, eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        model_type, vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=2, bos_token_id=1, **{**TINY_MOE_CONFIGS[model_type], **overrides})
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32,
                                             attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Routers scaled up so routing is decisive (top-k margins far above rounding),
            # the rest so that every path moves the logits.
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.3)
            elif p.dim() > 1:
                p.normal_(0.0, 0.08)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.05)
    model.save_pretrained(path)
    return model.eval()
