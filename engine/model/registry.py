"""Which class builds a model: the HF ``architectures`` name -> its family's module.

``engine.model.config.SUPPORTED_ARCHITECTURES`` names the same architectures, mapped to the
config flags they read; a new family adds its name to both.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engine.model.config import ModelConfig
from engine.model.layers.attention import AttentionMetadata
from engine.model.llama import LlamaForCausalLM
from engine.model.moe_families import MoEForCausalLM


class CausalLM(Protocol):
    """What the model runner needs of every family (besides being an ``nn.Module``)."""

    config: ModelConfig

    def __init__(self, config: ModelConfig, max_positions: int) -> None: ...

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """Token ids [T] -> final hidden states [T, hidden]."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [N, hidden] -> logits [N, vocab]."""

    def bind_kv_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Give each layer its (K, V) views of the paged cache."""

    def use_fused_kernels(self) -> None:
        """CUDA only: switch to the Triton kernels."""


MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "Qwen3MoeForCausalLM": MoEForCausalLM,
    "Qwen2MoeForCausalLM": MoEForCausalLM,
    "MixtralForCausalLM": MoEForCausalLM,
}

# The next family, not built: DeepSeek-V2/V3 (and Kimi-K2) = MLA attention (a low-rank
# compressed KV: ``kv_a_proj_with_mqa`` + ``kv_b_proj``, one latent "head" per token in the
# paged cache, so KVCacheLayout and kv_transfer's head slicing need a latent-width variant) +
# MoE with shared experts and grouped sigmoid top-k (``MoEConfig.scoring``). It goes in
# ``engine/model/deepseek.py`` (an ``MLAAttention`` in layers/) and is registered here.
PLANNED_ARCHITECTURES = {
    "DeepseekV2ForCausalLM": "MLA attention + grouped top-k MoE (not built yet)",
    "DeepseekV3ForCausalLM": "MLA attention + grouped top-k MoE (not built yet)",
}


def model_class(config: ModelConfig) -> type[CausalLM]:
    """The class that builds ``config``'s architecture; a clear error if none does."""
    arch = config.architecture
    if arch not in MODEL_CLASSES:
        raise ValueError(f"no model class for architecture {arch!r}; "
                         f"supported: {', '.join(sorted(MODEL_CLASSES))}")
    return MODEL_CLASSES[arch]
