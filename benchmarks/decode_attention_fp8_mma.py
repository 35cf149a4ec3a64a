"""Experiment (issue 19): FP8-KV decode attention on FP8 tensor cores.

engine/kernels/decode_attention.py widens each e4m3 tile to fp16 and runs fp16 MMAs with the
4 query heads of a GQA group padded to 16 rows; at 64 sequences x 1k tokens it reaches ~0.5
of the FP8 bytes' copy time (benchmarks/results/README.md, session 12). Here the cache tiles
stay e4m3 and feed FP8 MMAs directly, tokens as the MMA's M (``s^T = k q^T``): q is quantized
to e4m3 per head (its amax / 448), and with ``PV_FP8`` the probabilities too (times 256, so
that they sit in e4m3's normal range down to ~6e-5), as FlashAttention-3's FP8 path does. The
price is precision, measured here against fp32 attention over the dequantized cache.

    python -m benchmarks.decode_attention_fp8_mma [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
import triton.language as tl

P_SCALE = 256.0


@triton.jit
def _fp8_mma_attention(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale, v_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_tb, stride_xb, stride_xh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, QK_FP8: tl.constexpr,
    PV_FP8: tl.constexpr, PV_TRANSPOSED: tl.constexpr, P_SCALE: tl.constexpr,
    QK_HILO: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_len = tl.load(lens_ptr + b)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, TOKENS)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    q_t = tl.load(q_ptr + b * stride_qb + heads[None, :] * stride_qh + d[:, None],
                  mask=g_mask[None, :], other=0.0).to(tl.float32)  # [D, G]
    if QK_HILO:  # q = (hi + lo / 16) * q_scale, both e4m3: two FP8 MMAs, one accumulator
        q_scale = tl.maximum(tl.max(tl.abs(q_t), axis=0), 1e-30) / 448.0  # [G]
        q_op = (q_t / q_scale[None, :]).to(tl.float8e4nv)
        q_lo = ((q_t / q_scale[None, :] - q_op.to(tl.float32)) * 16.0).to(tl.float8e4nv)
        s_scale = scale * q_scale
    elif QK_FP8:
        q_scale = tl.maximum(tl.max(tl.abs(q_t), axis=0), 1e-12) / 448.0  # [G]
        q_op = (q_t / q_scale[None, :]).to(tl.float8e4nv)
        s_scale = scale * q_scale  # [G]
    else:
        q_op = tl.clamp(q_t, -65504.0, 65504.0).to(tl.float16)
        s_scale = tl.full([GROUP_PAD], 1.0, tl.float32) * scale
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    if PV_TRANSPOSED:
        acc_t = tl.zeros([HEAD_DIM, GROUP_PAD], tl.float32)
    else:
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for t0 in range(0, seq_len, TOKENS):
        pos = t0 + n
        valid = pos < seq_len
        page = tl.load(tables_ptr + b * stride_tb + pos // BLOCK_SIZE, mask=valid, other=0)
        row = page.to(tl.int64) * stride_kb + kvh * stride_kh + (pos % BLOCK_SIZE) * stride_kt
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        if QK_HILO:
            s_t = tl.dot(k, q_op, tl.dot(k, q_lo) * 0.0625) * s_scale[None, :]
        else:
            if not QK_FP8:
                k = k.to(tl.float16)
            s_t = tl.dot(k, q_op) * s_scale[None, :]  # [T, G]
        s_t = tl.where(valid[:, None], s_t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
        alpha = tl.exp(m_i - m_new)
        p_t = tl.exp(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        if PV_FP8:
            p_op = (p_t * P_SCALE).to(tl.float8e4nv)
        else:
            p_op = p_t.to(tl.float16)
        if PV_TRANSPOSED:
            v_t = tl.load(v_ptr + row[None, :] + d[:, None], mask=valid[None, :], other=0.0)
            if not PV_FP8:
                v_t = v_t.to(tl.float16)
            acc_t = acc_t * alpha[None, :] + tl.dot(v_t, p_op)
        else:
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            if not PV_FP8:
                v = v.to(tl.float16)
            acc = acc * alpha[:, None] + tl.dot(tl.trans(p_op), v)
        m_i = m_new
    inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)
    if PV_FP8:
        inv = inv / P_SCALE
    if PV_TRANSPOSED:
        out_t = acc_t * (inv * v_scale)[None, :]
        tl.store(out_ptr + b * stride_xb + heads[None, :] * stride_xh + d[:, None],
                 out_t.to(out_ptr.dtype.element_ty), mask=g_mask[None, :])
    else:
        out = acc * (inv * v_scale)[:, None]
        tl.store(out_ptr + b * stride_xb + heads[:, None] * stride_xh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])


@triton.jit
def _fp8_hilo_attention(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale, v_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_tb, stride_xb, stride_xh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    TOKENS: tl.constexpr, COMBINE_BY_DOT: tl.constexpr,
):
    """q as two e4m3 parts, hi = e4m3(q / s_hi) and lo = e4m3((q - hi * s_hi) / s_lo), side by
    side in the 16 columns of one FP8 MMA (hi in 0-7, lo in 8-15; GROUP <= 8 heads): scores
    at about bf16's precision for no more MMA work, since the 4 or 8 heads padded to 16 columns
    left the room. The scores of a head are then S[:, h] * s_hi + S[:, 8 + h] * s_lo, and each
    appears twice in the 16 columns the PV MMA needs (column 2h and 2h + 1)."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_len = tl.load(lens_ptr + b)
    j = tl.arange(0, 16)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, TOKENS)
    head_of_col = j % 8
    q_t = tl.load(q_ptr + b * stride_qb + (kvh * GROUP + head_of_col)[None, :] * stride_qh
                  + d[:, None], mask=(head_of_col < GROUP)[None, :], other=0.0).to(tl.float32)
    s_hi = tl.maximum(tl.max(tl.abs(q_t), axis=0), 1e-30) / 448.0
    hi = (q_t / s_hi[None, :]).to(tl.float8e4nv)
    rest = q_t - hi.to(tl.float32) * s_hi[None, :]
    s_lo = tl.maximum(tl.max(tl.abs(rest), axis=0), 1e-30) / 448.0
    lo = (rest / s_lo[None, :]).to(tl.float8e4nv)
    q_op = tl.where((j < 8)[None, :], hi, lo)
    q_scale = tl.where(j < 8, s_hi, s_lo) * scale
    combine = tl.where((j[:, None] % 8) == (j[None, :] % 8), 1.0, 0.0).to(tl.float16)
    m_i = tl.full([16], float("-inf"), tl.float32)
    l_i = tl.zeros([16], tl.float32)
    acc_t = tl.zeros([HEAD_DIM, 16], tl.float32)
    for t0 in range(0, seq_len, TOKENS):
        pos = t0 + n
        valid = pos < seq_len
        page = tl.load(tables_ptr + b * stride_tb + pos // BLOCK_SIZE, mask=valid, other=0)
        row = page.to(tl.int64) * stride_kb + kvh * stride_kh + (pos % BLOCK_SIZE) * stride_kt
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        parts = tl.dot(k, q_op) * q_scale[None, :]  # [T, 16]: hi and lo partial scores
        if COMBINE_BY_DOT:  # column c of the sum: parts[:, c % 8] + parts[:, c % 8 + 8]
            parts = tl.clamp(parts, -65504.0, 65504.0).to(tl.float16)
            s_t = tl.dot(parts, combine)
        else:
            s8 = tl.sum(tl.reshape(parts, [TOKENS, 2, 8]), axis=1)  # [T, 8]
            s_t = tl.reshape(tl.join(s8, s8), [TOKENS, 16])  # column 2h and 2h + 1: head h
        s_t = tl.where(valid[:, None], s_t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
        alpha = tl.exp(m_i - m_new)
        p_t = tl.exp(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        v_t = tl.load(v_ptr + row[None, :] + d[:, None], mask=valid[None, :], other=0.0)
        acc_t = acc_t * alpha[None, :] + tl.dot(v_t.to(tl.float16), p_t.to(tl.float16))
        m_i = m_new
    out_t = acc_t * (v_scale / tl.where(l_i > 0, l_i, 1.0))[None, :]
    if COMBINE_BY_DOT:  # head h in columns h and h + 8
        head = j
        keep = j < GROUP
    else:  # head h in columns 2h and 2h + 1
        head = j // 2
        keep = (j % 2 == 0) & (head < GROUP)
    tl.store(out_ptr + b * stride_xb + (kvh * GROUP + head)[None, :] * stride_xh + d[:, None],
             out_t.to(out_ptr.dtype.element_ty), mask=keep[None, :])


def fp8_hilo_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale=1.0,
                       v_scale=1.0, tokens=128, num_warps=4, num_stages=2,
                       combine_by_dot=True):
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert group <= 8
    out = torch.empty_like(q)
    _fp8_hilo_attention[(num_seqs, num_kv_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, out, scale * k_scale, v_scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, TOKENS=tokens,
        COMBINE_BY_DOT=combine_by_dot, num_warps=num_warps, num_stages=num_stages)
    return out


def fp8_mma_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale=1.0,
                      v_scale=1.0, tokens=128, num_warps=4, num_stages=2, qk_fp8=True,
                      pv_fp8=True, pv_transposed=True, qk_hilo=False):
    """One split only: q [B, Hq, D]; caches e4m3 [blocks, Hkv, block_size, D] (strided)."""
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    _fp8_mma_attention[(num_seqs, num_kv_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, out, scale * k_scale, v_scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TOKENS=tokens, QK_FP8=qk_fp8, PV_FP8=pv_fp8,
        PV_TRANSPOSED=pv_transposed, P_SCALE=P_SCALE, QK_HILO=qk_hilo, num_warps=num_warps,
        num_stages=num_stages)
    return out


def reference(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale=1.0, v_scale=1.0):
    """fp32 attention over the dequantized cache, q as given (bf16 -> fp32)."""
    num_seqs, num_heads, head_dim = q.shape
    _, hkv, block_size, _ = k_cache.shape
    out = torch.empty(num_seqs, num_heads, head_dim, device=q.device)
    for b in range(num_seqs):
        length = int(seq_lens[b])
        pos = torch.arange(length, device=q.device)
        pages = block_tables[b, pos // block_size].long()
        k = k_cache[pages, :, pos % block_size].float() * k_scale  # [L, Hkv, D]
        v = v_cache[pages, :, pos % block_size].float() * v_scale
        k = k.repeat_interleave(num_heads // hkv, 1)
        v = v.repeat_interleave(num_heads // hkv, 1)
        s = torch.einsum("hd,lhd->hl", q[b].float(), k) * scale
        out[b] = torch.einsum("hl,lhd->hd", torch.softmax(s, -1), v)
    return out


# (tokens, num_warps, num_stages, qk_fp8, pv_fp8, pv_transposed); the first sweep of session
# 12 (fp8_mma_gpu.json) ran qk8-pv16T, qk8-pv8T, qk8-pv8 and qk16-pv16T at 64/128/256 tokens
# and 2/3 stages: qk8-pv16T at 128 tokens was the one that paid (44.7 us against 59.2)
# a second call: q as hi + lo side by side in the MMA's columns (``_fp8_hilo_attention``) kept
# the precision (0.21% mean error) but its reshapes cost what the FP8 MMA saved (53.5-57 us)
CONFIGS = [(128, 4, 2, True, False, True)]
# (tokens, num_warps, num_stages): q as hi + lo / 16, two FP8 MMAs into one accumulator
# a third: two FP8 MMAs cost what one fp16 MMA does (56-63 us). Now the side-by-side parts
# summed by a [T, 16] x [16, 16] fp16 MMA instead of reshapes (``combine_by_dot``)
HILO2_CONFIGS = [(128, 4, 3)]
HILO_CONFIGS = [(t, 4, st, c) for t in (64, 128) for st in (2, 3) for c in (True,)] + [
    (64, 4, 2, False)]


def main() -> None:
    from benchmarks.decode_attention_bench import BLOCK, CTX, HKV, HQ, LAYERS, D
    from benchmarks.engine_bench import hbm_copy_bytes_per_s
    from benchmarks.graph_timing import graph_us
    from benchmarks.report import machine_info, print_table, save_json
    from engine.kernels.decode_attention import paged_decode_attention

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/decode_attention_fp8_mma.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[64])
    args = parser.parse_args()
    dev = torch.device("cuda")
    copy_bw = hbm_copy_bytes_per_s(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    rows, results = [], {}
    for batch in args.batches:
        pages = batch * CTX // BLOCK
        # Scaled as a real cache is (kv_quant: amax / 448 per layer): values across e4m3's range
        caches = [(torch.randn(pages, HKV, 2, BLOCK, D, generator=g, device=dev) * 100)
                  .clamp(-448, 448).to(torch.float8_e4m3fn) for _ in range(LAYERS)]
        tables = torch.randperm(pages, generator=g, device=dev).to(torch.int32)
        tables = tables.reshape(batch, CTX // BLOCK)
        lens = torch.full((batch,), CTX, dtype=torch.int32, device=dev)
        # Scores spread like a trained model's (a few dominant keys): q scaled up
        q = (3 * torch.randn(batch, HQ, D, generator=g, device=dev)).to(torch.bfloat16)
        ks = vs = 1.0 / 100
        floor = 1e6 * batch * CTX * HKV * D * 2 / copy_bw
        ref = reference(q, caches[0][:, :, 0], caches[0][:, :, 1], tables, lens, D ** -0.5, ks, vs)
        ref_max = ref.abs().max().item()

        def engine(cache):
            return paged_decode_attention(q, cache[:, :, 0], cache[:, :, 1], tables, lens,
                                          D ** -0.5, 1, k_scale=ks, v_scale=vs)

        calls = [("engine", engine)]
        for c in CONFIGS:
            t, w, st, qk, pv, tr = c
            label = f"t{t}st{st}-qk{'8' if qk else '16'}-pv{'8' if pv else '16'}{'T' if tr else ''}"
            calls.append((label, lambda cache, t=t, w=w, st=st, qk=qk, pv=pv, tr=tr:
                          fp8_mma_attention(q, cache[:, :, 0], cache[:, :, 1], tables, lens,
                                            D ** -0.5, ks, vs, tokens=t, num_warps=w,
                                            num_stages=st, qk_fp8=qk, pv_fp8=pv,
                                            pv_transposed=tr)))
        for t, w, st in HILO2_CONFIGS:
            calls.append((f"t{t}w{w}st{st}-hilo2", lambda cache, t=t, w=w, st=st:
                          fp8_mma_attention(q, cache[:, :, 0], cache[:, :, 1], tables, lens,
                                            D ** -0.5, ks, vs, tokens=t, num_warps=w,
                                            num_stages=st, qk_fp8=True, pv_fp8=False,
                                            pv_transposed=True, qk_hilo=True)))
        for t, w, st, c in HILO_CONFIGS:
            calls.append((f"t{t}w{w}st{st}-hilo{'-dot' if c else ''}",
                          lambda cache, t=t, w=w, st=st, c=c:
                          fp8_hilo_attention(q, cache[:, :, 0], cache[:, :, 1], tables, lens,
                                             D ** -0.5, ks, vs, tokens=t, num_warps=w,
                                             num_stages=st, combine_by_dot=c)))
        for label, call in calls:
            try:
                got = call(caches[0]).float()
                us = graph_us([lambda cache=cache, call=call: call(cache) for cache in caches])
            except Exception as e:  # a config that does not compile
                print(f"b{batch} {label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            err = (got - ref).abs()
            key = f"b{batch}-{label}"
            results[key] = {"us": us, "floor_us": floor, "max_err_rel": err.max().item() / ref_max,
                            "mean_err_rel": err.mean().item() / ref.abs().mean().item()}
            rows.append([key, us, floor, floor / us, results[key]["max_err_rel"],
                         results[key]["mean_err_rel"]])
            print(rows[-1], flush=True)
    table = print_table(["config", "us", "KV floor us", "vs floor",
                         "max |err| / max |ref|", "mean |err| / mean |ref|"], rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "results": results, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
