"""Attention over the paged KV cache (the simple, correct path).

The cache of one layer is two tensors (K and V) in the HND layout
``[num_blocks, num_kv_heads, block_size, head_dim]``: a block's slice for a head range is
contiguous, which is what lets a decode rank pull just the heads it owns.

A step's tokens come flattened: ``T`` tokens from ``B`` sequences, sequence ``b`` owning rows
``query_start_loc[b]:query_start_loc[b+1]`` at the *end* of its context of ``seq_lens[b]``
tokens. This path gathers each sequence's pages and calls SDPA; the fast GPU kernels are
chosen in the GPU issue and must match it.

An FP8 cache (``layers/kv_quant.py``) is quantized on write and dequantized where pages are
read; a sequence whose whole context is new this step attends to its K/V rounded through FP8,
the values any later read of the cache gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from engine.model.layers import kv_quant
from engine.runner.host_copy import to_device


@dataclass
class AttentionMetadata:
    """Where a step's tokens live in the paged cache. Built by the model runner each step."""

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset of each new token
    query_start_loc: list[int]  # [B + 1] host ints: token row where each sequence starts
    seq_lens: list[int]  # [B] context length of each sequence after this step
    block_tables: list[list[int]]  # [B] block ids of each sequence, in order
    block_size: int
    # Sequences with one query token this step also carry padded tensors, so their attention
    # runs as one batched call instead of a loop: every sequence of a decode-only step, or
    # the decoding sequences of a step that also prefills (then listed in ``decode_seqs``).
    block_table_tensor: torch.Tensor | None = None  # [D, max_blocks], padded
    seq_lens_tensor: torch.Tensor | None = None  # [D]
    decode_splits: int = 1  # CUDA kernel: how many parts each sequence's context is split in
    decode_seqs: frozenset[int] | None = None  # mixed steps: the batched sequences ...
    decode_rows: torch.Tensor | None = None  # ... and their token rows, in the same order

    # Device copies of block tables, made once per step and shared by every layer.
    _block_index: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_decode_only(self) -> bool:
        """One new token per sequence, all attended by the batched decode kernel."""
        return self.block_table_tensor is not None and self.decode_seqs is None

    def block_index(self, b: int, device: torch.device) -> torch.Tensor:
        """Sequence ``b``'s blocks that hold its context, as a device tensor.

        Built once per step, pinned and copied without blocking: a blocking copy in every
        layer made the host wait for the GPU 32 times a step, and a chunked 4k-token prefill
        on an H100 took 154 ms instead of 98 (the GPU idle in between).
        """
        index = self._block_index.get(b)
        if index is None:
            num_blocks = (self.seq_lens[b] + self.block_size - 1) // self.block_size
            index = to_device(self.block_tables[b][:num_blocks], torch.long, device)
            self._block_index[b] = index
        return index


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_size: int,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Store the new tokens' K and V ([T, kv_heads, head_dim]) at their slots (an FP8 cache:
    quantized with the layer's scales)."""
    block_ids = torch.div(slot_mapping, block_size, rounding_mode="floor")
    offsets = slot_mapping % block_size
    if kv_quant.is_fp8(k_cache):
        k, v = kv_quant.quantize(k, k_scale), kv_quant.quantize(v, v_scale)
    # Advanced indices split by a slice put the index dims first: the target is [T, H, D].
    k_cache[block_ids, :, offsets, :] = k
    v_cache[block_ids, :, offsets, :] = v


def gather_kv(cache: torch.Tensor, index: torch.Tensor, seq_len: int, scale: float = 1.0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """A sequence's cached K or V as [kv_heads, seq_len, head_dim]; ``index``: its blocks.
    From an FP8 cache: dequantized to ``dtype`` with ``scale``."""
    pages = cache.index_select(0, index)  # [nb, H, bs, D]
    if kv_quant.is_fp8(cache):
        pages = kv_quant.dequantize(pages, scale, dtype)
    num_heads, head_dim = pages.shape[1], pages.shape[3]
    return pages.transpose(0, 1).reshape(num_heads, -1, head_dim)[:, :seq_len]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of q ([T, heads, head_dim]) over each sequence's cached context.

    ``k``/``v`` are this step's new keys and values (already written to the cache): a
    sequence whose whole context is new this step attends to them directly, without
    gathering pages. ``k_scale``/``v_scale``: the FP8 cache's scales (unused otherwise).
    """
    scales = (k_scale, v_scale)
    if meta.is_decode_only:
        return _decode_attention(q, k_cache, v_cache, meta, scale, scales)
    out = torch.empty_like(q)
    batched = frozenset()
    if meta.decode_seqs is not None:  # the decoding sequences of a mixed step, in one call
        rows = meta.decode_rows
        out[rows] = _decode_attention(q.index_select(0, rows), k_cache, v_cache, meta, scale,
                                      scales)
        batched = meta.decode_seqs
    if kv_quant.is_fp8(k_cache):
        k, v = kv_quant.round_trip(k, k_scale), kv_quant.round_trip(v, v_scale)
    loc = meta.query_start_loc
    for b in range(meta.num_seqs):
        if b in batched:
            continue
        start, end = loc[b], loc[b + 1]
        num_query = end - start
        seq_len = meta.seq_lens[b]
        if num_query == seq_len:  # nothing cached before: the new K/V are the whole context
            kb = k[start:end].transpose(0, 1).unsqueeze(0)
            vb = v[start:end].transpose(0, 1).unsqueeze(0)
        else:
            blocks = meta.block_index(b, k_cache.device)
            kb = gather_kv(k_cache, blocks, seq_len, k_scale, q.dtype).unsqueeze(0)
            vb = gather_kv(v_cache, blocks, seq_len, v_scale, q.dtype).unsqueeze(0)
        qb = q[start:end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        gqa = kb.shape[1] != qb.shape[1]
        if num_query == 1:
            mask, causal = None, False
        elif num_query == seq_len:
            mask, causal = None, True
        else:
            # A chunk after cached context: query i sits at position seq_len - num_query + i.
            # The lower-right causal bias lets SDPA use its fused kernels (no [n, L] mask);
            # it takes equal head counts, so grouped K/V heads are expanded here.
            mask, causal = causal_lower_right(num_query, seq_len), False
            if gqa:
                group = qb.shape[1] // kb.shape[1]
                kb, vb = kb.repeat_interleave(group, 1), vb.repeat_interleave(group, 1)
                gqa = False
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=causal,
                                           scale=scale, enable_gqa=gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out


def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, scale: float,
                      kv_scales: tuple[float, float]) -> torch.Tensor:
    """One query token per sequence of ``meta.block_table_tensor``: q is [D, heads, dim]."""
    if q.is_cuda:
        from engine.kernels.decode_attention import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, meta.block_table_tensor,
                                      meta.seq_lens_tensor, scale, meta.decode_splits,
                                      *kv_scales)
    return _batched_decode_attention(q, k_cache, v_cache, meta, scale, kv_scales)


def _batched_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    kv_scales: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """One query token per sequence: gather padded pages for all sequences, mask the padding."""
    tables = meta.block_table_tensor
    num_seqs, max_blocks = tables.shape
    _, num_kv_heads, block_size, head_dim = k_cache.shape
    max_len = max_blocks * block_size

    def gather(cache: torch.Tensor, kv_scale: float) -> torch.Tensor:  # -> [B, H, max_len, D]
        pages = cache[tables]  # [B, nb, H, bs, D]
        if kv_quant.is_fp8(cache):
            pages = kv_quant.dequantize(pages, kv_scale, q.dtype)
        return pages.transpose(1, 2).reshape(num_seqs, num_kv_heads, max_len, head_dim)

    k, v = gather(k_cache, kv_scales[0]), gather(v_cache, kv_scales[1])
    positions = torch.arange(max_len, device=q.device)
    mask = (positions[None, :] < meta.seq_lens_tensor[:, None])[:, None, None, :]  # [B,1,1,L]
    o = F.scaled_dot_product_attention(
        q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=num_kv_heads != q.shape[1]
    )  # [B, H, 1, D]
    return o.squeeze(2)
