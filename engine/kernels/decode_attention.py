"""Paged decode attention for CUDA in Triton: one query token per sequence, GQA-aware,
split over the context ("split-K") so that few sequences still fill the GPU.

Pass 1, grid (seqs, kv_heads, splits): each program takes the query heads that share one KV
head, walks its share of the sequence's pages (gathering rows through the block table, so no
copy of the cache is made), and keeps an online softmax; it writes a partial output and its
log-sum-exp. Pass 2, grid (seqs, q_heads): merges the splits.

With one split (a batch that fills the GPU by itself) there is nothing to merge: the program
writes the output and pass 2 is not launched.

Under a half-precision q, FP8 tiles are widened to fp16 (``FP16_MATH``), q and the
probabilities with them, not to bf16: Hopper converts e4m3 pairs to fp16 in one instruction,
to bf16 only through fp32. Tokens a program takes per iteration: 64 from a bf16 cache; from an
FP8 one 32 when the context is split, 128 with one split. benchmarks/decode_attention_bench.py
on an H200, a layer of 64 sequences x 1k tokens (one split): FP8 73.8 us widened to bf16 at
32 tokens, 67.0 widened to fp16, 59.6 at 128 tokens (bf16 caches: 64.9-66.8, their floor 63.5,
FP8's 31.7); at batch 1 (32 splits) 128 tokens cost 7.4 us against 6.2 at 32.

An in-kernel merge by the last split of each head group (a counter in memory instead of
the second launch) was tried and measured slower at batch 1 (8.3 against 6.4 us a layer), so
pass 2 stays a kernel.

With ``new_token`` (a decode-only step, engine/model/layers/attention_block.py), pass 1 also
does engine/kernels/rope_kv.py's work, which would otherwise be one more kernel a layer: every
program rotates (and, for Qwen3, RMS-normalizes) its query heads from the projection's raw
output, and the program whose split holds the new position rotates the new k and stores k and
v at the token's slot before it walks its pages (a CTA barrier makes its own stores visible to
its loads; no other program reads that row). The values are rope_kv's: the same roundings,
the same e4m3 quantization of an FP8 cache.

Loading the first tile of cached positions before the PDL wait as well (those rows are
earlier steps' writes; the new one then added from registers) measured no faster on an H200:
Qwen3-30B-A3B batch 1 2.70 ms without, 2.74-2.75 with; FP8 2.83 either way
(benchmarks/results/early_kv_loads_gpu.json).

With ``prefetch`` (o_proj's weight, from attention_block.py), pass 1's programs also ask the
L2 for that weight, each its share, while the kernel leaves HBM mostly idle
(engine/kernels/l2_prefetch.py; off until measured).

The cache is the engine's strided per-layer view ``[blocks, kv_heads, block_size, head_dim]``.
Launch parameters depend only on shapes, so both passes can be captured in a CUDA graph.

An FP8 cache (engine/model/layers/kv_quant.py): pages are read as e4m3 (half the bytes) and
widened in registers; the per-layer K scale multiplies the scores and the V scale
the output, so neither touches each element.

At 64 sequences x 1k tokens an FP8 cache runs at ~0.5 of its bytes' copy time (bf16: 0.95):
the 4 query heads of a GQA group fill 16 MMA rows and an FP8 tile holds twice the tokens for
the same bytes, so the tensor cores, not HBM, set the pace. Making the widened tile the MMA's
A operand instead (``s^T = k q^T``) and capping registers gained 2-6%
(benchmarks/results/decode_attention_fp8_cache_as_a_gpu.json) and is not here. FP8 MMAs on the
e4m3 tiles as they are: with q in e4m3 -24% a call but 35x the error (5% mean against fp32);
with q as two e4m3 parts, its precision kept, -9% (decode_attention_fp8_mma_*_gpu.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine.kernels import l2_prefetch, pdl
from engine.kernels.rope_kv import to_fp8

TOKENS = 64  # per program iteration, bf16/fp32 caches
TOKENS_FP8 = 32  # FP8 caches split over the context (few sequences; the module docstring)
TOKENS_FP8_ONE_SPLIT = 128  # FP8 caches, one split (a batch that fills the GPU)
# Decode-only steps rotate q/k and write the new KV inside pass 1 (``new_token``) instead of
# in rope_kv's kernel first; read at each forward (benchmarks/pdl_bench.py --switch flips it).
ROPE_IN_DECODE = True


@dataclass(frozen=True)
class NewToken:
    """A decode step's un-rotated k and v [B, Hkv, D] (one token a sequence; q comes un-rotated
    too) and what rotating and storing them takes, as ``rope_kv.rope_and_write_kv`` has it."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor  # [B] int64
    cos_table: torch.Tensor  # [max_positions, D], contiguous
    sin_table: torch.Tensor
    slot_mapping: torch.Tensor  # [B] int64
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (q weight, k weight, eps)


@triton.jit
def _norm_rows(x, partner, w_ptr, d, pd, eps, HEAD_DIM: tl.constexpr):
    """Qwen3's per-head RMSNorm of rows x [R, D] and of their RoPE partners (x's columns
    ``pd``), rounded as ``RMSNorm.forward``: the normalized value to x's dtype, times the weight,
    rounded again."""
    dtype = x.dtype
    f, fp = x.to(tl.float32), partner.to(tl.float32)
    inv = tl.rsqrt(tl.sum(f * f, 1) / HEAD_DIM + eps)[:, None]
    w = tl.load(w_ptr + d).to(tl.float32)[None, :]
    wp = tl.load(w_ptr + pd).to(tl.float32)[None, :]
    return ((w * (f * inv).to(dtype).to(tl.float32)).to(dtype),
            (wp * (fp * inv).to(dtype).to(tl.float32)).to(dtype))


@triton.jit
def _rotated(x_ptr, d, pd, c, s, sign, w_ptr, eps, mask, QK_NORM: tl.constexpr,
             HEAD_DIM: tl.constexpr):
    """Rows [R, D] at ``x_ptr + d`` ([R, 1] row pointers), normalized if QK_NORM, rotated:
    ``x * cos + rotate_half(x) * sin`` in fp32, rounded once (rope_kv's ``_rotate``)."""
    x = tl.load(x_ptr + d[None, :], mask=mask, other=0.0)
    partner = tl.load(x_ptr + pd[None, :], mask=mask, other=0.0)
    if QK_NORM:
        x, partner = _norm_rows(x, partner, w_ptr, d, pd, eps, HEAD_DIM)
    out = x.to(tl.float32) * c[None, :] + sign[None, :] * partner.to(tl.float32) * s[None, :]
    return out.to(x.dtype)


@triton.jit
def _decode_partial(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, o_ptr, lse_ptr,
    scale, v_scale,
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kt,
    stride_tb,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    out_ptr, stride_xb, stride_xh,
    # ROPE (NewToken): q is raw; the new token's k, v, position, slot, tables, norm weights
    nk_ptr, nv_ptr, stride_nkb, stride_nkh, stride_nvb, stride_nvh,
    pos_ptr, cos_ptr, sin_ptr, table_stride, slot_ptr, k_scale, qn_ptr, kn_ptr, eps,
    pf_ptr, pf_bytes,  # the next weight to bring into the L2 (engine/kernels/l2_prefetch.py)
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, SPLITS: tl.constexpr,
    PRECISION: tl.constexpr, FP16_MATH: tl.constexpr, PDL: tl.constexpr,
    ROPE: tl.constexpr, QK_NORM: tl.constexpr, FP8_CACHE: tl.constexpr,
    PF_SLOTS: tl.constexpr, PF_CHUNK: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    if PF_SLOTS > 0:  # after the wait: the projection before still streams its weight
        l2_prefetch.prefetch_share(pf_ptr, pf_bytes, (b * tl.num_programs(1) + kvh) * SPLITS
                                   + split, tl.num_programs(0) * tl.num_programs(1) * SPLITS,
                                   PF_SLOTS, PF_CHUNK)
    seq_len = tl.load(lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(seq_len, SPLITS), TOKENS) * TOKENS
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh
    if ROPE:
        half: tl.constexpr = HEAD_DIM // 2
        pd = (d + half) % HEAD_DIM  # each column's rotate_half partner, negated below half
        sign = tl.where(d < half, -1.0, 1.0)
        new_pos = tl.load(pos_ptr + b)
        # The tables' second half repeats the first (cat(freqs, freqs)); rounded to the
        # activation dtype as the eager path rounds them.
        c = tl.load(cos_ptr + new_pos * table_stride + d % half).to(q_ptr.dtype.element_ty)
        sn = tl.load(sin_ptr + new_pos * table_stride + d % half).to(q_ptr.dtype.element_ty)
        c, sn = c.to(tl.float32), sn.to(tl.float32)
        q = _rotated(q_rows, d, pd, c, sn, sign, qn_ptr, eps, g_mask[:, None], QK_NORM, HEAD_DIM)
        if split == (seq_len - 1) // per_split:  # this split holds the new token: store it
            k_new = _rotated(nk_ptr + b * stride_nkb + kvh * stride_nkh + tl.zeros([1, 1], tl.int32),
                             d, pd, c, sn, sign, kn_ptr, eps, d[None, :] >= 0, QK_NORM,
                             HEAD_DIM)
            v_new = tl.load(nv_ptr + b * stride_nvb + kvh * stride_nvh + d[None, :])
            slot = tl.load(slot_ptr + b)
            dst = (slot // BLOCK_SIZE) * stride_kb + kvh * stride_kh \
                + (slot % BLOCK_SIZE) * stride_kt + d[None, :]
            if FP8_CACHE:
                tl.store(k_ptr + dst, to_fp8(k_new, k_scale, k_ptr.dtype.element_ty))
                tl.store(v_ptr + dst, to_fp8(v_new, v_scale, v_ptr.dtype.element_ty))
            else:
                tl.store(k_ptr + dst, k_new.to(k_ptr.dtype.element_ty))
                tl.store(v_ptr + dst, v_new.to(v_ptr.dtype.element_ty))
            tl.debug_barrier()  # the row is read back below, by other threads of this program
    else:
        q = tl.load(q_rows + d[None, :], mask=g_mask[:, None], other=0.0)
    if FP16_MATH:  # clamped: a bf16 q beyond fp16's range would make the scores inf
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    n = tl.arange(0, TOKENS)
    for t0 in range(start, end, TOKENS):
        pos = t0 + n
        valid = pos < end
        page = tl.load(tables_ptr + b * stride_tb + pos // BLOCK_SIZE, mask=valid, other=0)
        row = page.to(tl.int64) * stride_kb + kvh * stride_kh + (pos % BLOCK_SIZE) * stride_kt
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        k = k.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [GROUP_PAD, TOKENS]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        v = v.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None] * v_scale
    if SPLITS == 1:  # nothing to merge: the output, in q's dtype
        tl.store(out_ptr + b * stride_xb + heads[:, None] * stride_xh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + split * stride_os
                 + d[None, :], out, mask=g_mask[:, None])
        tl.store(lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_merge(
    o_ptr, lse_ptr, out_ptr,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    stride_xb, stride_xh,
    HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + s, mask=s < SPLITS,
                  other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp(lse - m))
    parts = tl.load(o_ptr + b * stride_ob + h * stride_oh + s[:, None] * stride_os + d[None, :],
                    mask=(s < SPLITS)[:, None], other=0.0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.maximum(tl.sum(w, axis=0), 1e-30)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    tl.store(out_ptr + b * stride_xb + h * stride_xh + d, out.to(out_ptr.dtype.element_ty))


def num_splits(num_seqs: int, num_kv_heads: int, num_sms: int) -> int:
    """Enough programs to fill the GPU about twice; capped to keep the merge cheap."""
    want = (2 * num_sms + num_seqs * num_kv_heads - 1) // (num_seqs * num_kv_heads)
    return max(1, min(32, want))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           splits: int, k_scale: float = 1.0, v_scale: float = 1.0,
                           tokens: int | None = None, num_warps: int = 4,
                           num_stages: int = 2, fp16_math: bool | None = None,
                           new_token: NewToken | None = None,
                           prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Hq, D]; caches [blocks, Hkv, block_size, D] (strided views; q's dtype or
    float8_e4m3fn, dequantized with ``k_scale`` / ``v_scale``); block_tables [B, max_blocks]
    int32; seq_lens [B] int32. Returns [B, Hq, D] in q's dtype. ``new_token``: q is not
    rotated yet and the step's k/v are not in the cache yet (the module docstring).
    ``prefetch``: the weight read next (o_proj's), asked of the L2 while this kernel runs
    (engine/kernels/l2_prefetch.py).
    ``tokens`` (default: by the cache's dtype, the module docstring) / ``num_warps`` /
    ``num_stages`` / ``fp16_math`` (default: on for an FP8 cache under a half-precision q): for
    the benchmarks."""
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert k_cache.stride(3) == 1 and q.stride(2) == 1 and v_cache.stride() == k_cache.stride()
    if tokens is None and k_cache.dtype == torch.float8_e4m3fn:
        tokens = TOKENS_FP8_ONE_SPLIT if splits == 1 else TOKENS_FP8
    tokens = tokens or TOKENS
    out = torch.empty_like(q)
    partial = torch.empty(num_seqs, num_heads, splits, head_dim, device=q.device,
                          dtype=torch.float32)
    lse = torch.empty(num_seqs, num_heads, splits, device=q.device, dtype=torch.float32)
    nt = new_token
    if nt is not None:
        assert nt.k.stride(2) == nt.v.stride(2) == 1 and nt.cos_table.is_contiguous()
        assert nt.sin_table.is_contiguous() and head_dim % 2 == 0
        qn, kn, eps = nt.qk_norm if nt.qk_norm is not None else (q, q, 0.0)
        rope_args = (nt.k, nt.v, nt.k.stride(0), nt.k.stride(1), nt.v.stride(0), nt.v.stride(1),
                     nt.positions, nt.cos_table, nt.sin_table, nt.cos_table.stride(0),
                     nt.slot_mapping, float(k_scale), qn, kn, float(eps))
    else:  # unused pointers and numbers
        rope_args = (q, q, 0, 0, 0, 0, seq_lens, q, q, 0, seq_lens, 1.0, q, q, 0.0)
    pf_args, pf_flags = l2_prefetch.plan(prefetch, None, num_seqs * num_kv_heads * splits,
                                         num_warps, q)
    _decode_partial[(num_seqs, num_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, partial, lse, scale * k_scale, v_scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        out, out.stride(0), out.stride(1),
        *rope_args, *pf_args,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TOKENS=tokens, SPLITS=splits,
        # fp32 caches (correctness runs) must not round through tf32.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FP16_MATH=fp16_math if fp16_math is not None else (
            k_cache.dtype == torch.float8_e4m3fn and q.dtype != torch.float32),
        ROPE=nt is not None, QK_NORM=nt is not None and nt.qk_norm is not None,
        FP8_CACHE=k_cache.dtype == torch.float8_e4m3fn,
        num_warps=num_warps, num_stages=num_stages, **pdl.launch(q.device), **pf_flags,
    )
    if splits > 1:
        _decode_merge[(num_seqs, num_heads)](
            partial, lse, out,
            partial.stride(0), partial.stride(1), partial.stride(2),
            lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits),
            num_warps=4, **pdl.launch(q.device),
        )
    return out
