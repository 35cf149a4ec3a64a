"""Experiment (issue 19): FP8-KV decode attention with the cache tiles as the MMA's A operand.

engine/kernels/decode_attention.py computes ``s = q @ k^T`` and ``acc += p @ v``: the widened
e4m3 tiles are the dot's B operand, which Hopper's MMA reads from shared memory, so each
tile goes global -> registers (widen) -> shared -> MMA. At 64 sequences x 1k tokens that
kernel runs at ~0.53 of its bytes' copy time against 0.95 for a bf16 cache, whose tiles go
global -> shared -> MMA. Here the roles are swapped, ``s^T = k @ q^T`` and
``acc^T += v^T @ p^T``: the widened tile is the A operand (tokens, or head dims, as M >= 64),
which the MMA can take from registers, as Triton does for dequantized weights; the small q^T
and p^T are the B operand. One split (a batch that fills the GPU by itself) only.

    python -m benchmarks.decode_attention_fp8_variants [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def _fp8_cache_as_a(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale, v_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_tb, stride_xb, stride_xh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, PV_TRANSPOSED: tl.constexpr,
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
                  mask=g_mask[None, :], other=0.0)  # [D, G]
    q_t = tl.clamp(q_t.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
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
        s_t = tl.dot(k.to(tl.float16), q_t) * scale  # [T, G]
        s_t = tl.where(valid[:, None], s_t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
        alpha = tl.exp(m_i - m_new)
        p_t = tl.exp(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        if PV_TRANSPOSED:
            v_t = tl.load(v_ptr + row[None, :] + d[:, None], mask=valid[None, :], other=0.0)
            acc_t = acc_t * alpha[None, :] + tl.dot(v_t.to(tl.float16), p_t.to(tl.float16))
        else:
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(tl.trans(p_t.to(tl.float16)), v.to(tl.float16))
        m_i = m_new
    inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)
    if PV_TRANSPOSED:
        out_t = acc_t * (inv * v_scale)[None, :]
        tl.store(out_ptr + b * stride_xb + heads[None, :] * stride_xh + d[:, None],
                 out_t.to(out_ptr.dtype.element_ty), mask=g_mask[None, :])
    else:
        out = acc * (inv * v_scale)[:, None]
        tl.store(out_ptr + b * stride_xb + heads[:, None] * stride_xh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])


def fp8_cache_as_a(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale=1.0, v_scale=1.0,
                   tokens=128, num_warps=4, num_stages=2, pv_transposed=True, maxnreg=None):
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    _fp8_cache_as_a[(num_seqs, num_kv_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, out, scale * k_scale, v_scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TOKENS=tokens, PV_TRANSPOSED=pv_transposed,
        num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": maxnreg} if maxnreg else {}))
    return out


# (tokens, num_warps, num_stages, pv_transposed, maxnreg): session 12's first sweep (no register
# cap) ran every tokens x warps x stages x pv of 64-256 / 4, 8 / 2, 3: none beat the engine's
# kernel (60.0 us at 64 x 1k; best 58.6, t128w4st3-pvT), all at 2 blocks an SM (~190 registers)
CONFIGS = [(t, 4, st, pv, r) for r in (128, 168) for t in (64, 128) for st in (2, 3)
           for pv in (True, False)] + [(128, 4, 3, True, None)]


def main() -> None:
    from benchmarks.decode_attention_bench import BLOCK, CTX, HKV, HQ, LAYERS, D
    from benchmarks.engine_bench import hbm_copy_bytes_per_s
    from benchmarks.graph_timing import graph_us
    from benchmarks.report import machine_info, print_table, save_json
    from engine.kernels.decode_attention import paged_decode_attention

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/decode_attention_fp8_variants.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    dev = torch.device("cuda")
    copy_bw = hbm_copy_bytes_per_s(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    rows, results = [], {}
    for batch in args.batches:
        pages = batch * CTX // BLOCK
        caches = [torch.randn(pages, HKV, 2, BLOCK, D, generator=g, device=dev)
                  .to(torch.float8_e4m3fn) for _ in range(LAYERS)]
        tables = torch.randperm(pages, generator=g, device=dev).to(torch.int32)
        tables = tables.reshape(batch, CTX // BLOCK)
        lens = torch.full((batch,), CTX, dtype=torch.int32, device=dev)
        q = torch.randn(batch, HQ, D, generator=g, device=dev, dtype=torch.bfloat16)
        floor = 1e6 * batch * CTX * HKV * D * 2 / copy_bw

        def engine(cache):
            return paged_decode_attention(q, cache[:, :, 0], cache[:, :, 1], tables, lens,
                                          D ** -0.5, 1)

        reference = engine(caches[0]).float()
        calls = [("engine", engine)]
        for c in CONFIGS:
            t, w, st, pv, r = c
            calls.append((f"t{t}w{w}st{st}{'-pvT' if pv else '-pv'}-r{r}",
                          lambda cache, t=t, w=w, st=st, pv=pv, r=r: fp8_cache_as_a(
                              q, cache[:, :, 0], cache[:, :, 1], tables, lens, D ** -0.5,
                              tokens=t, num_warps=w, num_stages=st, pv_transposed=pv,
                              maxnreg=r)))
        for label, call in calls:
            try:
                got = call(caches[0]).float()
                us = graph_us([lambda cache=cache, call=call: call(cache) for cache in caches])
            except Exception as e:  # a config that does not compile (shared memory, registers)
                print(f"b{batch} {label}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            diff = (got - reference).abs().max().item()
            key = f"b{batch}-{label}"
            results[key] = {"us": us, "floor_us": floor, "max_abs_diff_vs_engine": diff}
            rows.append([key, us, floor, floor / us, diff])
            print(rows[-1], flush=True)
    table = print_table(["config", "us", "KV floor us", "vs floor", "max |diff| vs engine"], rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "results": results, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
