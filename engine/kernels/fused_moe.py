"""Fused mixture-of-experts on CUDA (Triton): align slots to blocks of one expert, grouped
GEMM with SiLU*mul, grouped down GEMM scaled by the routing weights.

The design is vLLM's fused_moe, written anew here. A token's ``top_k`` choices are ``slots``
(``token * top_k + j``). 1. ``align``: the slots of each expert, padded to a multiple of
``BLOCK_M``, laid end to end (``sorted_slots``), with each expert's first row (``starts``), its
real count and the padded total, all on the device. 2. One program per (block of rows, tile of
the intermediate dimension) finds its expert from ``starts``, gathers the tokens' rows and
multiplies them by that expert's gate and up rows in two accumulators, writing
``SiLU(gate) * up`` per slot. 3. The down GEMM does the same over the intermediate dimension,
multiplies by the slot's routing weight and writes one row per slot; the ``top_k`` rows of a
token are summed at the end (one order, so results are deterministic per slot).

Shapes depend only on the number of tokens, never on how they route, and nothing is read on
the host: CUDA graphs capture it. Grids are sized for the worst case (``max_rows``); programs
past the real padded total return at once. Under expert parallelism a rank holds experts
``[expert_start, expert_start + E_local)``; other experts' slots are left out of the sort and
their rows stay zero.

Decode-sized steps (``<= SMALL_SLOTS`` slots) align in one program (histogram, cumsum, atomic
cursors); larger ones with a few sync-free torch ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SMALL_SLOTS = 1024  # at most this many slots: one-program align, BLOCK_M 16
_FAR = tl.constexpr(1 << 30)  # a start no row reaches (experts past the last)


@triton.jit
def _align_one_program(ids_ptr, sorted_ptr, starts_ptr, counts_ptr, cursor_ptr, total_ptr,
                       num_slots, expert_start, num_local, BLOCK_M: tl.constexpr,
                       SLOTS_P2: tl.constexpr, EXPERTS_P2: tl.constexpr):
    slot = tl.arange(0, SLOTS_P2)
    in_range = slot < num_slots
    e = tl.load(ids_ptr + slot, mask=in_range, other=-1).to(tl.int32) - expert_start
    local = in_range & (e >= 0) & (e < num_local)
    key = tl.where(local, e, num_local)  # num_local < EXPERTS_P2: a bin nobody reads
    experts = tl.arange(0, EXPERTS_P2)
    counts = tl.where(experts < num_local, tl.histogram(key, EXPERTS_P2), 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, 0) - padded
    real = experts < num_local
    tl.store(starts_ptr + experts, starts, mask=real)
    tl.store(counts_ptr + experts, counts, mask=real)
    tl.store(cursor_ptr + experts, starts, mask=real)
    tl.store(total_ptr, tl.sum(padded, 0))
    tl.debug_barrier()  # cursors written before any slot takes its place
    dest = tl.atomic_add(cursor_ptr + key, 1, mask=local)
    tl.store(sorted_ptr + dest, slot, mask=local)


@triton.jit
def _block_expert(starts_ptr, counts_ptr, row0, num_local, EXPERTS_P2: tl.constexpr):
    """The expert owning rows [row0, row0 + BLOCK_M): the last one starting at or before."""
    experts = tl.arange(0, EXPERTS_P2)
    starts = tl.load(starts_ptr + experts, mask=experts < num_local, other=_FAR)
    e = tl.sum((starts <= row0).to(tl.int32), 0) - 1
    return e, tl.load(starts_ptr + e), tl.load(counts_ptr + e)


@triton.jit
def _gate_up_silu(x_ptr, w_ptr, out_ptr, sorted_ptr, starts_ptr, counts_ptr, total_ptr,
                  H, INTER, top_k, num_local, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, EXPERTS_P2: tl.constexpr, PRECISION: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_M
    if row0 >= tl.load(total_ptr):
        return
    e, start, count = _block_expert(starts_ptr, counts_ptr, row0, num_local, EXPERTS_P2)
    rows = row0 + tl.arange(0, BLOCK_M)
    valid = rows - start < count
    slots = tl.load(sorted_ptr + rows, mask=valid, other=0)
    tokens = slots // top_k
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < INTER
    k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None].to(tl.int64) * H + k[None, :]
    g_ptrs = w_ptr + e.to(tl.int64) * 2 * INTER * H + n[None, :].to(tl.int64) * H + k[:, None]
    u_ptrs = g_ptrs + INTER * H  # up rows follow the gate rows
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k_ok = k < H - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        acc_g = tl.dot(a, tl.load(g_ptrs, mask=w_mask, other=0.0), acc_g,
                       input_precision=PRECISION)
        acc_u = tl.dot(a, tl.load(u_ptrs, mask=w_mask, other=0.0), acc_u,
                       input_precision=PRECISION)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(out_ptr + slots[:, None].to(tl.int64) * INTER + n[None, :],
             h.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


@triton.jit
def _down_weighted(h_ptr, w_ptr, out_ptr, weights_ptr, sorted_ptr, starts_ptr, counts_ptr,
                   total_ptr, H, INTER, num_local, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, EXPERTS_P2: tl.constexpr, PRECISION: tl.constexpr):
    row0 = tl.program_id(0) * BLOCK_M
    if row0 >= tl.load(total_ptr):
        return
    e, start, count = _block_expert(starts_ptr, counts_ptr, row0, num_local, EXPERTS_P2)
    rows = row0 + tl.arange(0, BLOCK_M)
    valid = rows - start < count
    slots = tl.load(sorted_ptr + rows, mask=valid, other=0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + slots[:, None].to(tl.int64) * INTER + k[None, :]
    w_ptrs = w_ptr + e.to(tl.int64) * H * INTER + n[None, :].to(tl.int64) * INTER + k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        k_ok = k < INTER - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc *= tl.load(weights_ptr + slots, mask=valid, other=0.0)[:, None]
    tl.store(out_ptr + slots[:, None].to(tl.int64) * H + n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])


def _max_rows(num_slots: int, num_local: int, block_m: int) -> int:
    # Every block holds at least one slot, and each expert wastes at most one partial block.
    return block_m * min(num_slots, triton.cdiv(num_slots, block_m) + num_local)


def align(ids: torch.Tensor, expert_start: int, num_local: int, block_m: int):
    """(sorted_slots, starts, counts, total [1], max_rows) for ``ids`` [T, k] (see the module
    docstring); int32 on the device, no host read."""
    dev = ids.device
    num_slots = ids.numel()
    max_rows = _max_rows(num_slots, num_local, block_m)
    if num_slots <= SMALL_SLOTS:
        sorted_slots = torch.empty(max_rows, dtype=torch.int32, device=dev)
        buf = torch.empty(3 * num_local + 1, dtype=torch.int32, device=dev)
        starts, counts = buf[:num_local], buf[num_local:2 * num_local]
        cursor, total = buf[2 * num_local:3 * num_local], buf[3 * num_local:]
        _align_one_program[(1,)](ids, sorted_slots, starts, counts, cursor, total, num_slots,
                                 expert_start, num_local, BLOCK_M=block_m,
                                 SLOTS_P2=max(16, triton.next_power_of_2(num_slots)),
                                 EXPERTS_P2=triton.next_power_of_2(num_local + 1))
        return sorted_slots, starts, counts, total, max_rows
    local_ids = ids.flatten().long() - expert_start
    is_local = (local_ids >= 0) & (local_ids < num_local)
    key = torch.where(is_local, local_ids, num_local)
    counts = torch.zeros(num_local + 1, dtype=torch.long, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts[num_local] = 0  # other ranks' experts take no rows
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded
    first_of_expert = torch.cumsum(counts, 0) - counts
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    rank = torch.arange(num_slots, device=dev) - first_of_expert[sorted_key]
    # Slots of other ranks' experts go to one trash row past max_rows.
    dest = torch.where(sorted_key < num_local, starts[sorted_key] + rank, max_rows)
    sorted_slots = torch.empty(max_rows + 1, dtype=torch.int32, device=dev)
    sorted_slots.scatter_(0, dest, order.to(torch.int32))
    total = padded.sum().reshape(1)
    return (sorted_slots, starts[:num_local].int(), counts[:num_local].int(), total.int(),
            max_rows)


def fused_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                  weights: torch.Tensor, ids: torch.Tensor, expert_start: int = 0,
                  num_experts: int | None = None) -> torch.Tensor:
    """``engine.model.layers.moe.experts_reference`` on CUDA: x [T, H], gate_up [E_l, 2I, H],
    down [E_l, H, I], weights/ids [T, k]; ``num_experts`` the global count (EP if larger)."""
    num_tokens, hidden = x.shape
    top_k = ids.shape[1]
    num_local, two_i, _ = gate_up.shape
    inter = two_i // 2
    num_slots = num_tokens * top_k
    small = num_slots <= SMALL_SLOTS
    block_m = 16 if small else 64
    x, ids = x.contiguous(), ids.contiguous()
    weights = weights.float().contiguous()
    sorted_slots, starts, counts, total, max_rows = align(ids, expert_start, num_local, block_m)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    experts_p2 = triton.next_power_of_2(num_local + 1)
    h = torch.empty(num_slots, inter, dtype=x.dtype, device=x.device)
    # Decode: narrow tiles so a handful of experts still spreads over every SM.
    bn1, bk1 = (32, 128) if small else (128, 64)
    _gate_up_silu[(max_rows // block_m, triton.cdiv(inter, bn1))](
        x, gate_up, h, sorted_slots, starts, counts, total, hidden, inter, top_k, num_local,
        BLOCK_M=block_m, BLOCK_N=bn1, BLOCK_K=bk1, EXPERTS_P2=experts_p2,
        PRECISION=precision, num_warps=4, num_stages=3)
    partial = num_experts is not None and num_local < num_experts
    out = (torch.zeros if partial else torch.empty)(num_slots, hidden, dtype=x.dtype,
                                                    device=x.device)
    bn2, bk2 = (32, 128) if small else (128, 64)
    _down_weighted[(max_rows // block_m, triton.cdiv(hidden, bn2))](
        h, down, out, weights, sorted_slots, starts, counts, total, hidden, inter, num_local,
        BLOCK_M=block_m, BLOCK_N=bn2, BLOCK_K=bk2, EXPERTS_P2=experts_p2,
        PRECISION=precision, num_warps=4 if small else 8, num_stages=3)
    return out.view(num_tokens, top_k, hidden).sum(dim=1)
