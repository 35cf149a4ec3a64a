"""Rotary embedding of q and k, and the KV-cache write, in one Triton kernel.

Eager, a layer spends about 18 small kernels on this (two table gathers and casts, the
multiplies, negations and concatenations of ``rotate_half`` for q and k, the slot division and
two scatter writes): at batch 1 on an H100 that was about 1 ms of a 7.5 ms decode step. Here one
program rotates one head of one token in place, and for a KV head also stores the rotated k and
the v at the token's slot. Numerics: cos and sin are rounded to the activation dtype as the
eager path rounds them, but the rotation itself runs in fp32 and is rounded once (eager rounds
each product and the sum), so a value may differ from eager by a rounding step of its operands'
scale; v is copied bit for bit.

An FP8 cache (engine/model/layers/kv_quant.py) gets k and v divided by the layer's scales and
rounded to e4m3, from the values rounded to the activation dtype first: bit for bit what
``kv_quant.quantize`` makes of the eager path's k and v.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl


@triton.jit
def _rotate(x1, x2, c, s, dtype: tl.constexpr):
    """(x1, x2) -> (x1*cos - x2*sin, x2*cos + x1*sin) in fp32, rounded once to dtype."""
    x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    return (x1 * c - x2 * s).to(dtype), (x2 * c + x1 * s).to(dtype)


@triton.jit
def to_fp8(x, scale, dtype: tl.constexpr):
    """x / scale, clamped to e4m3's range, rounded to the nearest e4m3."""
    y = x.to(tl.float32) / scale
    return tl.minimum(tl.maximum(y, -448.0), 448.0).to(dtype)


@triton.jit
def _head_norm(x1, x2, w_ptr, eps, HALF: tl.constexpr, dtype: tl.constexpr):
    """Qwen3's per-head RMSNorm of a head's two halves, rounded as ``RMSNorm.forward``: the
    normalized value to dtype, then times the weight, rounded again."""
    d = tl.arange(0, HALF)
    f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
    inv = tl.rsqrt((tl.sum(f1 * f1, 0) + tl.sum(f2 * f2, 0)) / (2 * HALF) + eps)
    w1 = tl.load(w_ptr + d).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + d).to(tl.float32)
    return ((w1 * (f1 * inv).to(dtype).to(tl.float32)).to(dtype),
            (w2 * (f2 * inv).to(dtype).to(tl.float32)).to(dtype))


@triton.jit
def _rope_write_kv(q_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, slot_ptr, kc_ptr, vc_ptr,
                   q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h,
                   table_stride, cache_stride_b, cache_stride_h, cache_stride_t, block_size,
                   num_q_heads, k_scale, v_scale, qn_ptr, kn_ptr, eps, HALF: tl.constexpr,
                   FP8: tl.constexpr, QK_NORM: tl.constexpr, PDL: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    dtype = q_ptr.dtype.element_ty
    d = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + t)
    # The table's second half repeats its first (cat(freqs, freqs)): read the first only.
    c = tl.load(cos_ptr + pos * table_stride + d).to(dtype).to(tl.float32)
    s = tl.load(sin_ptr + pos * table_stride + d).to(dtype).to(tl.float32)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py): it waits for our stores
        pdl.release_dependents()
    if h < num_q_heads:
        base = q_ptr + t * q_stride_t + h * q_stride_h
        x1, x2 = tl.load(base + d), tl.load(base + HALF + d)
        if QK_NORM:
            x1, x2 = _head_norm(x1, x2, qn_ptr, eps, HALF, dtype)
        o1, o2 = _rotate(x1, x2, c, s, dtype)
        tl.store(base + d, o1)
        tl.store(base + HALF + d, o2)
    else:
        kh = h - num_q_heads
        base = k_ptr + t * k_stride_t + kh * k_stride_h
        x1, x2 = tl.load(base + d), tl.load(base + HALF + d)
        if QK_NORM:
            x1, x2 = _head_norm(x1, x2, kn_ptr, eps, HALF, dtype)
        o1, o2 = _rotate(x1, x2, c, s, dtype)
        tl.store(base + d, o1)
        tl.store(base + HALF + d, o2)
        slot = tl.load(slot_ptr + t)
        dst = (slot // block_size) * cache_stride_b + kh * cache_stride_h + \
            (slot % block_size) * cache_stride_t
        full = tl.arange(0, 2 * HALF)
        vals = tl.load(v_ptr + t * v_stride_t + kh * v_stride_h + full)
        if FP8:
            cdt = kc_ptr.dtype.element_ty
            tl.store(kc_ptr + dst + d, to_fp8(o1, k_scale, cdt))
            tl.store(kc_ptr + dst + HALF + d, to_fp8(o2, k_scale, cdt))
            tl.store(vc_ptr + dst + full, to_fp8(vals, v_scale, cdt))
        else:
            tl.store(kc_ptr + dst + d, o1)
            tl.store(kc_ptr + dst + HALF + d, o2)
            tl.store(vc_ptr + dst + full, vals)


def supports(head_dim: int) -> bool:
    """The kernel reads a head's halves as power-of-two vectors."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def rope_and_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos_table: torch.Tensor, sin_table: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_size: int,
                      k_scale: float = 1.0, v_scale: float = 1.0,
                      qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place; store k and v [T, Hkv, D] at their
    slots of the HND caches [blocks, Hkv, block_size, D] (k_cache and v_cache share strides;
    float8_e4m3fn caches: quantized with ``k_scale`` / ``v_scale``). ``qk_norm``: (q_norm
    weight [D], k_norm weight [D], eps): each head RMS-normalized first (Qwen3), in the same
    program instead of two eager norms of about seven kernels each."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert supports(head_dim) and q.stride(2) == k.stride(2) == v.stride(2) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
    assert cos_table.is_contiguous() and sin_table.is_contiguous()
    if num_tokens == 0:
        return
    qn, kn, eps = qk_norm if qk_norm is not None else (q, k, 0.0)
    _rope_write_kv[(num_tokens, num_q_heads + num_kv_heads)](
        q, k, v, positions, cos_table, sin_table, slot_mapping, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_table.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_size, num_q_heads, float(k_scale), float(v_scale), qn, kn, float(eps),
        HALF=head_dim // 2, FP8=k_cache.dtype == torch.float8_e4m3fn,
        QK_NORM=qk_norm is not None, num_warps=1, **pdl.launch(q.device))
