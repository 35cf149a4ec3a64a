"""The MoE layer at decode batch sizes (Triton): route, gate_up with SiLU*mul, and down with
the routing weights, in two kernels that read only the chosen experts' rows.

At batch 1 a MoE layer is a weight read: 8 of 128 experts, 75 MB in Qwen3-30B-A3B. The grouped
path (engine/kernels/fused_moe.py) pays for generality there: the routing ops, the align
kernel, 16-row tensor-core tiles of which one row is real, and the sum over the top-k rows.
Here each slot (``token * top_k + j``) is a GEMV, like engine/kernels/gemv.py's:

0. ``moe_routing.route``: softmax and top-k of the router's logits, one program a token.
   (Routing inside every gate_up program instead saves that launch but puts the reductions
   before each program's first weight load; it measured slower: 39.5 against 31.6 us a layer
   on an H200 with the same tiles, session 7's moe_gemv_h200.json.)
1. ``_gate_up_silu``, grid (slots, I / BLOCK_N): takes slot's expert, streams BLOCK_N gate
   rows and the matching up rows of that expert and writes ``SiLU(gate) * up`` for the slot.
2. ``_down_weighted``, grid (tokens, H / BLOCK_N): for each of the token's ``top_k`` slots,
   BLOCK_N rows of that expert's down projection times the slot's activation, scaled by its
   weight and summed in fp32: the token's output, rounded once.

Tokens sharing an expert read its rows once each, so this pays only while slots rarely share
experts (``applies``: a handful of tokens); larger steps keep the grouped kernel. Shapes depend
only on the token count and nothing is read on the host, so CUDA graphs capture it. Under
expert parallelism slots of other ranks' experts are skipped (their share is zero here).
Numerics: gate, up and the down products accumulate in fp32 and round once each (eager rounds
each matmul, SiLU, the product and every expert's weighted output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl
from engine.kernels.moe_routing import route

MAX_TOKENS = 4  # at most this many tokens per step: this path; more: the grouped kernel
# Narrow tiles, from benchmarks/moe_gemv_bench.py on an H200 (moe_gemv_h200.json): at batch 1
# the 8 experts' gate_up rows give 8 x 384 programs of 2 warps and the down rows 2048 of one,
# routing in its own kernel first: 39.5 -> 25.5 us a layer, against 17.7 us of the 8 experts'
# bytes at the copy rate.
GATE_UP_TILES = (2, 1024, 2)  # BLOCK_N, BLOCK_K, num_warps
DOWN_TILES = (1, 1024, 1)


@triton.jit
def _gate_up_silu(x_ptr, w_ptr, h_ptr, ids_ptr, expert_start, num_local, H: tl.constexpr,
                  INTER: tl.constexpr, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    slot = tl.program_id(0)
    token = slot // TOP_K
    if PDL:  # engine/kernels/pdl.py: which rows to read comes from the routing kernel
        pdl.wait_for_producer()
    expert = tl.load(ids_ptr + slot)
    local = expert - expert_start
    if (local >= 0) & (local < num_local):
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < INTER
        k = tl.arange(0, BLOCK_K)
        g_ptrs = w_ptr + local.to(tl.int64) * 2 * INTER * H + n[:, None].to(tl.int64) * H \
            + k[None, :]
        acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        # Unrolled (H is a constant): every tile's load can be in flight at once, which a
        # weight-streaming kernel with few programs per SM needs to approach the copy rate.
        for k0 in tl.static_range(0, H, BLOCK_K):
            k_ok = k < H - k0
            x = tl.load(x_ptr + token.to(tl.int64) * H + k0 + k, mask=k_ok,
                        other=0.0).to(tl.float32)[None, :]
            m = n_ok[:, None] & k_ok[None, :]
            acc_g += tl.load(g_ptrs + k0, mask=m, other=0.0).to(tl.float32) * x
            acc_u += tl.load(g_ptrs + INTER * H + k0, mask=m, other=0.0).to(tl.float32) * x
        g = tl.sum(acc_g, 1)
        u = tl.sum(acc_u, 1)
        if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
            pdl.release_dependents()
        tl.store(h_ptr + slot.to(tl.int64) * INTER + n,
                 (g * tl.sigmoid(g) * u).to(h_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _down_weighted(h_ptr, w_ptr, out_ptr, weights_ptr, ids_ptr, expert_start, num_local,
                   H: tl.constexpr, INTER: tl.constexpr, TOP_K: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    token = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    n_ok = n < H
    k = tl.arange(0, BLOCK_K)
    out = tl.zeros([BLOCK_N], dtype=tl.float32)
    # Unrolled over the top-k slots and the intermediate dimension, and other ranks' experts
    # masked (not branched around), so that all of a token's weight loads are independent.
    for j in tl.static_range(TOP_K):
        slot = token * TOP_K + j
        local = tl.load(ids_ptr + slot) - expert_start
        held = (local >= 0) & (local < num_local)
        local = tl.where(held, local, 0)
        width = tl.where(held, INTER, 0)  # columns of the slot's row to read: none if not held
        w_ptrs = w_ptr + local.to(tl.int64) * H * INTER + n[:, None].to(tl.int64) * INTER \
            + k[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in tl.static_range(0, INTER, BLOCK_K):
            k_ok = k < width - k0
            a = tl.load(h_ptr + slot.to(tl.int64) * INTER + k0 + k, mask=k_ok,
                        other=0.0).to(tl.float32)[None, :]
            w = tl.load(w_ptrs + k0, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32) * a
        out += tl.where(held, tl.load(weights_ptr + slot), 0.0) * tl.sum(acc, 1)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    tl.store(out_ptr + token.to(tl.int64) * H + n, out.to(out_ptr.dtype.element_ty),
             mask=n_ok)


def applies(num_tokens: int) -> bool:
    return 0 < num_tokens <= MAX_TOKENS


def moe_gemv(x: torch.Tensor, router_logits: torch.Tensor, gate_up: torch.Tensor,
             down: torch.Tensor, top_k: int, renormalize: bool, expert_start: int = 0,
             gate_up_tiles: tuple[int, int, int] = GATE_UP_TILES,
             down_tiles: tuple[int, int, int] = DOWN_TILES
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [T, H], weights [T, k] fp32, ids [T, k] int32): the routed experts' sum for x
    [T, H] given the router's logits [T, E] (all experts, global ids); gate_up [E_l, 2I, H]
    and down [E_l, H, I] hold experts ``expert_start ..`` (the module docstring).
    ``*_tiles`` (BLOCK_N, BLOCK_K, num_warps): for benchmarks/moe_gemv_bench.py."""
    num_tokens, hidden = x.shape
    num_local, two_i, _ = gate_up.shape
    inter = two_i // 2
    num_slots = num_tokens * top_k
    x, logits = x.contiguous(), router_logits.contiguous()
    dev = x.device
    weights, ids = route(logits, top_k, renormalize)
    h = torch.empty(num_slots, inter, dtype=x.dtype, device=dev)
    bn, bk, warps = gate_up_tiles
    _gate_up_silu[(num_slots, triton.cdiv(inter, bn))](
        x, gate_up, h, ids, expert_start, num_local, H=hidden, INTER=inter, TOP_K=top_k,
        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **pdl.launch(dev))
    out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=dev)
    bn, bk, warps = down_tiles
    _down_weighted[(num_tokens, triton.cdiv(hidden, bn))](
        h, down, out, weights, ids, expert_start, num_local, H=hidden, INTER=inter, TOP_K=top_k,
        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **pdl.launch(dev))
    return out, weights, ids
