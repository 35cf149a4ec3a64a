"""Checks of the decode-time MoE kernels, run on CUDA by tests/gpu/test_moe_gemv.py and on CPU
under the Triton interpreter by tests/unit/test_moe_kernels_interpreted.py (``python -m`` this
module).

- ``moe_routing.route`` against ``moe.route`` (eager softmax, top-k, renormalise): the same
  expert ids, weights within fp32 rounding, for 128, 60 (not a power of two) and 8 experts,
  with and without renormalising; logits distinct so that the top-k is unique;
- ``moe_gemv`` (routing inside, chosen experts' GEMVs) against ``experts_reference`` on the
  same routing: fp32 within 1e-5 of the output's scale, bf16 within the grouped kernel's
  tolerance (tests/gpu/test_fused_moe.py); a rank holding experts 4..7 of 8 gives exactly
  their share, tokens routed elsewhere give zeros;
- the RoPE + KV-write kernel with Qwen3's q/k norms folded in against the eager norms, then
  eager RoPE and ``write_kv``.
"""

from __future__ import annotations

import torch

from engine.model.layers.moe import experts_reference
from engine.model.layers.moe import route as eager_route


def _distinct_logits(num_tokens: int, num_experts: int, g: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    # Multiples of 1/16 below 8: exact in bf16, and distinct within a row.
    rows = [torch.randperm(num_experts, generator=g, device=device) for _ in range(num_tokens)]
    return torch.stack(rows).float() / 16 - 4


def check_route(device: torch.device) -> None:
    from engine.kernels.moe_routing import route

    g = torch.Generator(device=device).manual_seed(0)
    for num_tokens, num_experts, top_k in [(1, 128, 8), (5, 60, 4), (33, 8, 2), (2, 8, 8)]:
        for renormalize in (True, False):
            for dtype in (torch.float32, torch.bfloat16):
                logits = _distinct_logits(num_tokens, num_experts, g, device).to(dtype)
                weights, ids = route(logits, top_k, renormalize)
                ref_w, ref_ids = eager_route(logits, top_k, renormalize)
                assert torch.equal(ids.long(), ref_ids), (num_experts, top_k, ids, ref_ids)
                torch.testing.assert_close(weights, ref_w, atol=1e-6, rtol=1e-5)


def _experts(num_local: int, hidden: int, inter: int, dtype: torch.dtype,
             g: torch.Generator, device: torch.device):
    gate_up = 0.05 * torch.randn(num_local, 2 * inter, hidden, generator=g, device=device)
    down = 0.05 * torch.randn(num_local, hidden, inter, generator=g, device=device)
    return gate_up.to(dtype), down.to(dtype)


def check_moe_gemv(device: torch.device, big: bool) -> None:
    from engine.kernels.moe_gemv import moe_gemv

    g = torch.Generator(device=device).manual_seed(1)
    # (tokens, experts, top_k, hidden, intermediate): tiles that mask (H 200, I 72), 60
    # experts, every token of a step; big: the Qwen3-30B-A3B layer at batch 1 and 4.
    shapes = [(1, 8, 2, 200, 72), (4, 60, 4, 128, 64), (3, 16, 8, 64, 32)]
    if big:
        shapes += [(1, 128, 8, 2048, 768), (4, 128, 8, 2048, 768)]
    for num_tokens, num_experts, top_k, hidden, inter in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for renormalize in (True, False):
                x = torch.randn(num_tokens, hidden, generator=g, device=device).to(dtype)
                logits = _distinct_logits(num_tokens, num_experts, g, device).to(dtype)
                gate_up, down = _experts(num_experts, hidden, inter, dtype, g, device)
                got, weights, ids = moe_gemv(x, logits, gate_up, down, top_k, renormalize)
                ref_w, ref_ids = eager_route(logits, top_k, renormalize)
                assert torch.equal(ids.long(), ref_ids)
                torch.testing.assert_close(weights, ref_w, atol=1e-6, rtol=1e-5)
                ref = experts_reference(x.float(), gate_up.float(), down.float(), ref_w,
                                        ref_ids)
                _assert_near(got.float(), ref, dtype)
    # Expert parallelism: this rank holds experts 4..7 of 8; the rest of the sum is others'.
    x = torch.randn(5, 96, generator=g, device=device)
    logits = _distinct_logits(5, 8, g, device)
    logits[0, 4:] -= 8  # token 0 routes to experts 0..3 only: its output here is zero
    gate_up, down = _experts(4, 96, 48, torch.float32, g, device)
    got, _, _ = moe_gemv(x[:4], logits[:4], gate_up, down, 2, True, expert_start=4)
    ref_w, ref_ids = eager_route(logits[:4], 2, True)
    ref = experts_reference(x[:4], gate_up, down, ref_w, ref_ids, expert_start=4)
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    _assert_near(got, ref, torch.float32)


def _assert_near(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    scale = ref.abs().max().item()
    if dtype == torch.float32:
        assert (got - ref).abs().max().item() <= 1e-5 * max(scale, 1.0), (got - ref).abs().max()
    else:  # one bf16 rounding of the activation and of the output, against fp32
        assert (got - ref).abs().max().item() <= 0.02 * scale
        assert (got - ref).norm().item() <= 0.01 * ref.norm().item()


def check_rope_qk_norm(device: torch.device) -> None:
    from engine.kernels.rope_kv import rope_and_write_kv
    from engine.model.config import ModelConfig
    from engine.model.layers.attention import write_kv
    from engine.model.layers.norm import RMSNorm
    from engine.model.layers.rope import RotaryEmbedding

    hq, hkv, d, block, blocks, num_tokens = 4, 2, 32, 16, 8, 5
    config = ModelConfig(model_type="qwen3", vocab_size=100, hidden_size=hq * d,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=hq,
                         num_key_value_heads=hkv, head_dim=d, rope_theta=1000000.0,
                         qk_norm=True)
    g = torch.Generator(device=device).manual_seed(2)
    for dtype in (torch.bfloat16, torch.float32):
        rope = RotaryEmbedding(config, 512).to(device)
        q_norm, k_norm = RMSNorm(d, 1e-6).to(device), RMSNorm(d, 1e-6).to(device)
        with torch.no_grad():
            q_norm.weight.copy_(1 + 0.3 * torch.randn(d, generator=g, device=device))
            k_norm.weight.copy_(1 + 0.3 * torch.randn(d, generator=g, device=device))
        q_norm.to(dtype)
        k_norm.to(dtype)
        qkv = (3 * torch.randn(num_tokens, (hq + 2 * hkv) * d, generator=g,
                               device=device)).to(dtype)
        positions = torch.randint(0, 512, (num_tokens,), generator=g, device=device)
        slots = torch.randperm(blocks * block, generator=g, device=device)[:num_tokens]
        shape = (blocks, hkv, 1, 2, block, d)

        def split(t):
            q, k, v = t.split([hq * d, hkv * d, hkv * d], dim=-1)
            return (q.reshape(num_tokens, hq, d), k.reshape(num_tokens, hkv, d),
                    v.reshape(num_tokens, hkv, d))

        eager = torch.zeros(shape, dtype=dtype, device=device)
        q, k, v = split(qkv.clone())
        with torch.no_grad():
            q_ref, k_ref = rope(positions, q_norm(q), k_norm(k))
        write_kv(eager[:, :, 0, 0], eager[:, :, 0, 1], k_ref, v, slots, block)
        fused = torch.zeros(shape, dtype=dtype, device=device)
        q, k, v = split(qkv.clone())
        rope_and_write_kv(q, k, v, positions, rope.cos_table, rope.sin_table, fused[:, :, 0, 0],
                          fused[:, :, 0, 1], slots, block,
                          qk_norm=(q_norm.weight.data, k_norm.weight.data, 1e-6))
        # The norm's output is rounded as eager rounds it; rsqrt and the sum's order may move
        # it by a rounding step, and RoPE rounds once where eager rounds three times.
        atol = 4 * torch.finfo(dtype).eps * max(q_ref.abs().max().item(), 1.0)
        torch.testing.assert_close(q, q_ref, atol=atol, rtol=0)
        torch.testing.assert_close(k, k_ref, atol=atol, rtol=0)
        torch.testing.assert_close(fused[:, :, :, 0], eager[:, :, :, 0], atol=atol, rtol=0)
        assert torch.equal(fused[:, :, :, 1], eager[:, :, :, 1])


def run_all(device: torch.device, big: bool) -> None:
    check_route(device)
    check_moe_gemv(device, big)
    check_rope_qk_norm(device)


if __name__ == "__main__":  # CPU, under TRITON_INTERPRET=1 (tests/triton_cpu.py)
    from tests.triton_cpu import use_torch_casts

    use_torch_casts()
    run_all(torch.device("cpu"), big=False)
    print("moe kernel cases: ok")
