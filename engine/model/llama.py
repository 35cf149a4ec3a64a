"""The Llama family (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, SmolLM2), assembled from layers/.

The members differ only in config flags (q/k/v bias, q/k RMSNorm, rope scaling, tied
embeddings). Module and parameter names equal transformers', so a checkpoint's state dict loads
as is; ``hf_state_dict`` gives it back under those names. Tensor parallelism is applied from
outside (``engine.model.tensor_parallel``).

Tokens arrive flattened across sequences ([T]). Each layer passes (hidden, residual) along and
adds the residual inside the next norm (``RMSNorm.add_and_norm``): one fused kernel on CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.attention import AttentionMetadata
from engine.model.layers.attention_block import AttentionBlock
from engine.model.layers.linear import Linear
from engine.model.layers.mlp import GatedMLP
from engine.model.layers.norm import RMSNorm
from engine.model.layers.rope import RotaryEmbedding


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryEmbedding):
        super().__init__()
        self.self_attn = AttentionBlock(config, rope)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it is added)."""
        h, residual = self.input_layernorm.add_and_norm(x, residual)
        h = self.self_attn(h, positions, meta)
        h, residual = self.post_attention_layernorm.add_and_norm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        rope = RotaryEmbedding(config, max_positions)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, rope)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """``forward`` gives hidden states for every token; ``compute_logits`` the selected rows."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, max_positions)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.fused_kernels = False  # CUDA kernels on (use_fused_kernels)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            x, residual = layer(x, residual, positions, meta)
        return self.model.norm.add_and_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def bind_kv_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (k_cache, v_cache) in zip(self.model.layers, kv_caches, strict=True):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k_cache, v_cache

    def use_fused_kernels(self) -> None:
        """Switch to the CUDA kernels of engine/kernels/ (fused add+RMSNorm, SiLU*mul,
        RoPE+KV write; the one-token GEMV); the same function up to rounding."""
        self.fused_kernels = True
        self.model.norm.fused = True
        for layer in self.model.layers:
            layer.input_layernorm.fused = layer.post_attention_layernorm.fused = True
            layer.self_attn.use_fused_kernels()
            layer.mlp.use_fused_kernels()
            # Each norm's output goes into one linear only: it may hand that one its
            # quantized rows (layers/norm.py).
            layer.input_layernorm.feeds = (layer.self_attn.qkv_proj,)
            if isinstance(layer.mlp, GatedMLP):  # a MoE block's input goes to its router too
                layer.post_attention_layernorm.feeds = (layer.mlp.gate_up_proj,)
            # ... and what each norm's successor streams (layers/norm.py)
            nxt = layer.mlp.gate_up_proj if isinstance(layer.mlp, GatedMLP) else layer.mlp.gate
            layer.input_layernorm.streams_next = tuple(
                linear for linear in (layer.self_attn.qkv_proj,) if linear is not None)
            layer.post_attention_layernorm.streams_next = (nxt,) if nxt is not None else ()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under transformers' names, fused projections split back (for references)."""
        state = {}
        for name, tensor in self.state_dict().items():
            if ".qkv_proj." in name:
                attn = self.get_submodule(name.rsplit(".qkv_proj.", 1)[0])
                q_size = attn.num_heads * attn.head_dim
                kv_size = attn.num_kv_heads * attn.head_dim
                for part, piece in zip(("q_proj", "k_proj", "v_proj"),
                                       tensor.split([q_size, kv_size, kv_size]), strict=True):
                    state[name.replace("qkv_proj", part)] = piece
            elif ".gate_up_proj." in name:
                gate, up = tensor.chunk(2)
                state[name.replace("gate_up_proj", "gate_proj")] = gate
                state[name.replace("gate_up_proj", "up_proj")] = up
            else:
                state[name] = tensor
        return state


def fuse_projections(model: LlamaForCausalLM) -> None:
    """Replace q/k/v and gate/up linears by one linear each (after any TP sharding)."""
    for layer in model.model.layers:
        layer.self_attn.fuse_projections()
        layer.mlp.fuse_projections()
