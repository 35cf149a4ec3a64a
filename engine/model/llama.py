"""The Llama-family transformer (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, SmolLM2) in one file.

Parameter names equal transformers' so a checkpoint's state dict loads as is. Tensor
parallelism is applied from outside (``engine.model.tensor_parallel``): this file only reads the
local head counts each attention module carries.

Tokens arrive flattened across sequences ([T]); the paged KV cache of each layer is bound to its
attention module by the model runner (``bind_kv_cache``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.attention import AttentionMetadata, paged_attention, write_kv
from engine.model.layers.rope import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryEmbedding):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads  # local heads; TP divides these
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d
        self.scale = d**-0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.qkv_proj: nn.Linear | None = None  # set by fuse_projections (one GEMM, not three)
        self.rope = rope
        self.fused_rope_kv = False  # CUDA: rotation and KV write in one kernel (use_fused_kernels)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        if self.qkv_proj is not None:
            q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        assert self.k_cache is not None, "bind_kv_cache() before the first forward"
        if self.fused_rope_kv:
            from engine.kernels.rope_kv import rope_and_write_kv

            rope_and_write_kv(q, k, v, positions, self.rope.cos_table, self.rope.sin_table,
                              self.k_cache, self.v_cache, meta.slot_mapping, meta.block_size)
        else:
            q, k = self.rope(positions, q, k)
            write_kv(self.k_cache, self.v_cache, k, v, meta.slot_mapping, meta.block_size)
        o = paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(o.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # set by fuse_projections
        self.fused_kernels = False  # CUDA: SiLU(gate) * up in one Triton kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_kernels and self.gate_up_proj is not None:
            from engine.kernels.fused_ops import silu_mul

            return self.down_proj(silu_mul(self.gate_up_proj(x)))
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryEmbedding):
        super().__init__()
        self.self_attn = Attention(config, rope)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        rope = RotaryEmbedding(config, max_positions)
        self.layers = nn.ModuleList(DecoderLayer(config, rope) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """``forward`` gives hidden states for every token; ``compute_logits`` the selected rows."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.config = config
        self.model = Backbone(config, max_positions)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.fused_kernels = False  # CUDA: residual add + RMSNorm fused (use_fused_kernels)

    def use_fused_kernels(self) -> None:
        """Switch to the CUDA kernels of engine/cuda/ (fused add+RMSNorm, SiLU*mul, RoPE+KV
        write; the one-token GEMV); the same function up to rounding."""
        from engine.kernels.gemv import use_for_decode
        from engine.kernels.rope_kv import supports

        self.fused_kernels = True
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            mlp.fused_kernels = True
            attn.fused_rope_kv = supports(attn.head_dim)
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                if linear is not None:
                    use_for_decode(linear)

    def bind_kv_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (k_cache, v_cache) in zip(self.model.layers, kv_caches, strict=True):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k_cache, v_cache

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        if self.fused_kernels:
            return self._forward_fused(x, positions, meta)
        for layer in self.model.layers:
            x = layer(x, positions, meta)
        return self.model.norm(x)

    def _forward_fused(self, x: torch.Tensor, positions: torch.Tensor,
                       meta: AttentionMetadata) -> torch.Tensor:
        """The same layers with each residual add folded into the next RMSNorm."""
        from engine.kernels.fused_ops import rmsnorm

        eps = self.config.rms_norm_eps
        layers = self.model.layers
        h, residual = rmsnorm(x, layers[0].input_layernorm.weight, eps)
        for i, layer in enumerate(layers):
            attn = layer.self_attn(h, positions, meta)
            h, residual = rmsnorm(attn, layer.post_attention_layernorm.weight, eps, residual)
            mlp = layer.mlp(h)
            next_norm = (layers[i + 1].input_layernorm if i + 1 < len(layers)
                         else self.model.norm)
            h, residual = rmsnorm(mlp, next_norm.weight, eps, residual)
        return h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

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


def fuse_projections(model: CausalLM) -> None:
    """Replace q/k/v and gate/up linears by one linear each (after any TP sharding)."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_proj = _concat_linears([attn.q_proj, attn.k_proj, attn.v_proj])
            attn.q_proj = attn.k_proj = attn.v_proj = None
            mlp.gate_up_proj = _concat_linears([mlp.gate_proj, mlp.up_proj])
            mlp.gate_proj = mlp.up_proj = None


def _concat_linears(parts: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([p.weight for p in parts])
    has_bias = parts[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device,
                      dtype=weight.dtype)
    fused.weight.copy_(weight)
    if has_bias:
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused
