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
}


def model_class(config: ModelConfig) -> type[CausalLM]:
    """The class that builds ``config``'s architecture; a clear error if none does."""
    arch = config.architecture
    if arch not in MODEL_CLASSES:
        raise ValueError(f"no model class for architecture {arch!r}; "
                         f"supported: {', '.join(sorted(MODEL_CLASSES))}")
    return MODEL_CLASSES[arch]
