"""The MoE router's rule in one Triton kernel: softmax over all experts in fp32, top-k,
optionally renormalised (``engine.model.layers.moe.route``, which eager spends about five
kernels on: the cast, softmax, topk, sum and divide).

``route`` serves both MoE paths (engine/kernels/fused_moe.py, engine/kernels/moe_gemv.py);
``softmax_top_k`` is its body as a ``@triton.jit`` helper, for kernels that would route inside
their own programs. Two such fusions measured slower on an H200 and are not in the tree:
routing inside every batch-1 gate_up program (moe_gemv.py's docstring), and the gate's GEMV
routing in its last program to finish (a counter in memory; Qwen3-30B-A3B batch-1 step 2.71
-> 2.74-2.76 ms, benchmarks/results/route_in_gate_gpu.json).

Numerics: the softmax runs in fp32 as eager's does (``exp(x - max) / sum``; Triton's ``exp``
may differ from torch's in the last bit). Top-k takes the largest probability ``top_k`` times;
among equal probabilities the lowest expert id wins (torch.topk leaves that order unspecified;
equal bf16 logits do happen among 128 experts, and then either choice is the router's rule).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels import pdl


@triton.jit
def softmax_top_k(logits_ptr, token, num_experts, TOP_K: tl.constexpr, K_P2: tl.constexpr,
                  EXPERTS_P2: tl.constexpr, RENORMALIZE: tl.constexpr):
    """(weights [K_P2] fp32, ids [K_P2] int32) of one token's logits row; entries past
    ``TOP_K`` are 0."""
    e = tl.arange(0, EXPERTS_P2)
    real = e < num_experts
    x = tl.load(logits_ptr + token.to(tl.int64) * num_experts + e, mask=real,
                other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, 0))
    p = p / tl.sum(p, 0)
    left = tl.where(real, p, -1.0)  # probabilities not taken yet; -1: never taken
    j = tl.arange(0, K_P2)
    weights = tl.zeros([K_P2], dtype=tl.float32)
    ids = tl.zeros([K_P2], dtype=tl.int32)
    for i in tl.static_range(TOP_K):
        best = tl.max(left, 0)
        idx = tl.min(tl.where(left == best, e, EXPERTS_P2), 0)
        weights = tl.where(j == i, best, weights)
        ids = tl.where(j == i, idx, ids)
        left = tl.where(e == idx, -1.0, left)
    if RENORMALIZE:
        weights = weights / tl.sum(weights, 0)
    return weights, ids


@triton.jit
def _route(logits_ptr, weights_ptr, ids_ptr, num_experts, TOP_K: tl.constexpr,
           K_P2: tl.constexpr, EXPERTS_P2: tl.constexpr, RENORMALIZE: tl.constexpr,
           PDL: tl.constexpr):
    token = tl.program_id(0)
    if PDL:  # engine/kernels/pdl.py
        pdl.wait_for_producer()
    weights, ids = softmax_top_k(logits_ptr, token, num_experts, TOP_K, K_P2, EXPERTS_P2,
                                 RENORMALIZE)
    if PDL:  # the next kernel may launch now (engine/kernels/pdl.py)
        pdl.release_dependents()
    j = tl.arange(0, K_P2)
    out = token.to(tl.int64) * TOP_K + j
    tl.store(weights_ptr + out, weights, mask=j < TOP_K)
    tl.store(ids_ptr + out, ids, mask=j < TOP_K)


def route_constants(num_experts: int, top_k: int) -> dict:
    return {"K_P2": triton.next_power_of_2(top_k),
            "EXPERTS_P2": triton.next_power_of_2(num_experts)}


def route(router_logits: torch.Tensor, top_k: int,
          renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``engine.model.layers.moe.route`` in one kernel: (weights [T, k] fp32, ids [T, k]
    int32) for logits [T, E] (any float dtype)."""
    logits = router_logits.contiguous()
    num_tokens, num_experts = logits.shape
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    if num_tokens:
        _route[(num_tokens,)](logits, weights, ids, num_experts, TOP_K=top_k,
                              RENORMALIZE=renormalize, **route_constants(num_experts, top_k),
                              num_warps=1, **pdl.launch(logits.device))
    return weights, ids
