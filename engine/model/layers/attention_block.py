"""The self-attention block: q/k/v projection, RoPE, KV-cache write, paged attention, o_proj.

The attention itself (``paged_attention``, ``write_kv``) is ``layers/attention.py``; this
module owns the projections around it and the layer's slice of the paged KV cache, which the
model runner binds (``bind_kv_cache``). Head counts are local: tensor parallelism divides them
from outside (``engine.model.tensor_parallel``).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers.attention import AttentionMetadata, paged_attention, write_kv
from engine.model.layers.linear import Linear, concat_linears
from engine.model.layers.norm import RMSNorm
from engine.model.layers.rope import RotaryEmbedding


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, rope: RotaryEmbedding):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads  # local heads; TP divides these
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d
        self.scale = d**-0.5
        bias = config.attention_bias
        self.q_proj = Linear(h, self.num_heads * d, bias=bias)
        self.k_proj = Linear(h, self.num_kv_heads * d, bias=bias)
        self.v_proj = Linear(h, self.num_kv_heads * d, bias=bias)
        self.o_proj = Linear(self.num_heads * d, h)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.qkv_proj: Linear | None = None  # set by fuse_projections (one GEMM, not three)
        self.rope = rope
        self.fused_rope_kv = False  # CUDA: rotation and KV write in one kernel (use_fused_kernels)
        # ... and Qwen3's q/k norms in that kernel too (False: eager norms first; the MoE
        # benchmark's "before" column sets it so)
        self.fused_qk_norm = False
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        # An FP8 cache's per-layer scales (layers/kv_quant.py): 1.0 unless the checkpoint
        # has ``self_attn.k_scale`` / ``v_scale`` (loaders/weights.py sets them).
        self.k_scale = self.v_scale = 1.0

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
        assert self.k_cache is not None, "bind_kv_cache() before the first forward"
        if self.fused_rope_kv and meta.is_decode_only:
            from engine.kernels import decode_attention

            if decode_attention.ROPE_IN_DECODE:
                o = self._rotate_store_and_attend(q, k, v, positions, meta)
                return self.o_proj(o.reshape(num_tokens, self.num_heads * self.head_dim))
        q, k = self._rotate_and_store(q, k, v, positions, meta)
        o = paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale,
                            self.k_scale, self.v_scale)
        return self.o_proj(o.reshape(num_tokens, self.num_heads * self.head_dim))

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor):
        """(q, k, norm weights for a fused kernel or None): Qwen3's q/k norms applied here
        unless a kernel applies them (``fused_qk_norm``)."""
        if self.q_norm is None:
            return q, k, None
        if self.fused_qk_norm:
            return q, k, (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        return self.q_norm(q), self.k_norm(k), None

    def _rotate_and_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          positions: torch.Tensor,
                          meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) rotated, and this step's k and v written at their slots of the cache."""
        if self.fused_rope_kv:
            from engine.kernels.rope_kv import rope_and_write_kv

            q, k, qk_norm = self._qk_norm(q, k)
            rope_and_write_kv(q, k, v, positions, self.rope.cos_table, self.rope.sin_table,
                              self.k_cache, self.v_cache, meta.slot_mapping, meta.block_size,
                              self.k_scale, self.v_scale, qk_norm)  # in place
            return q, k
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope(positions, q, k)
        write_kv(self.k_cache, self.v_cache, k, v, meta.slot_mapping, meta.block_size,
                 self.k_scale, self.v_scale)
        return q, k

    def _rotate_store_and_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """A decode-only step on CUDA: RoPE, the q/k norms and the KV write inside the decode
        kernel's first pass, one kernel fewer a layer (engine/kernels/decode_attention.py)."""
        from engine.kernels.decode_attention import NewToken, paged_decode_attention

        q, k, qk_norm = self._qk_norm(q, k)
        new = NewToken(k, v, positions, self.rope.cos_table, self.rope.sin_table,
                       meta.slot_mapping, qk_norm)
        # o_proj's weight is what the GPU streams next: asked of the L2 while this kernel
        # leaves HBM idle (engine/kernels/l2_prefetch.py).
        return paged_decode_attention(q, self.k_cache, self.v_cache, meta.block_table_tensor,
                                      meta.seq_lens_tensor, self.scale, meta.decode_splits,
                                      self.k_scale, self.v_scale, new_token=new,
                                      prefetch=self.o_proj.weight)

    def fuse_projections(self) -> None:
        """q, k and v as one linear (after any TP sharding): one GEMM instead of three."""
        self.qkv_proj = concat_linears([self.q_proj, self.k_proj, self.v_proj])
        self.q_proj = self.k_proj = self.v_proj = None

    def use_fused_kernels(self) -> None:
        from engine.kernels.rope_kv import supports

        self.fused_rope_kv = supports(self.head_dim)
        self.fused_qk_norm = self.fused_rope_kv and self.q_norm is not None
        for linear in (self.qkv_proj, self.o_proj):
            if linear is not None:
                linear.use_fused_kernels()
