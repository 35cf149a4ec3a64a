"""The fused RoPE + KV-write kernel against the eager ops it replaces (CUDA only)."""

import pytest
import torch

from engine.model.config import ModelConfig, RopeScaling
from engine.model.layers.attention import write_kv
from engine.model.layers.rope import RotaryEmbedding

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("num_tokens", [1, 7, 300])
def test_rope_and_write_kv_matches_eager(dtype, num_tokens):
    from engine.kernels.rope_kv import rope_and_write_kv

    dev = torch.device("cuda")
    hq, hkv, d, block, blocks = 8, 2, 128, 16, 64
    config = ModelConfig(model_type="llama", vocab_size=100, hidden_size=hq * d, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=hq, num_key_value_heads=hkv,
                         head_dim=d, rope_theta=500000.0,
                         rope_scaling=RopeScaling())
    rope = RotaryEmbedding(config, 4096).to(dev)
    g = torch.Generator(device=dev).manual_seed(num_tokens)
    # q, k, v as the fused projection leaves them: views into one [T, (Hq + 2 Hkv) * D] row.
    qkv = torch.randn(num_tokens, (hq + 2 * hkv) * d, generator=g, device=dev).to(dtype)
    positions = torch.randint(0, 4096, (num_tokens,), generator=g, device=dev)
    slots = torch.randperm(blocks * block, generator=g, device=dev)[:num_tokens]
    # The engine's buffer: [blocks, heads, layers, K/V, block, dim]; the caches are views.
    buffer_shape = (blocks, hkv, 1, 2, block, d)

    def split(t):
        q, k, v = t.split([hq * d, hkv * d, hkv * d], dim=-1)
        return (q.reshape(num_tokens, hq, d), k.reshape(num_tokens, hkv, d),
                v.reshape(num_tokens, hkv, d))

    eager_buf = torch.zeros(buffer_shape, dtype=dtype, device=dev)
    q, k, v = split(qkv.clone())
    q_ref, k_ref = rope(positions, q, k)
    write_kv(eager_buf[:, :, 0, 0], eager_buf[:, :, 0, 1], k_ref, v, slots, block)

    fused_buf = torch.zeros(buffer_shape, dtype=dtype, device=dev)
    q, k, v = split(qkv.clone())
    rope_and_write_kv(q, k, v, positions, rope.cos_table, rope.sin_table, fused_buf[:, :, 0, 0],
                      fused_buf[:, :, 0, 1], slots, block)

    # One rounding instead of eager's three (each product, then the sum): they differ by a
    # rounding step of the operands' scale, not of the result's (sums that cancel to 0 in
    # eager come out as tiny values here), so the bound is absolute: 2 eps x the largest input.
    atol = 2 * torch.finfo(dtype).eps * qkv.abs().max().item()
    close = dict(atol=atol, rtol=0)
    torch.testing.assert_close(q, q_ref, **close)
    torch.testing.assert_close(k, k_ref, **close)
    torch.testing.assert_close(fused_buf[:, :, :, 0], eager_buf[:, :, :, 0], **close)
    assert torch.equal(fused_buf[:, :, :, 1], eager_buf[:, :, :, 1])  # v: copied as is
    written = fused_buf[:, :, :, 0].flatten(1).abs().sum(1) > 0
    assert int(written.sum()) == len(set((slots // block).tolist()))  # and nothing else
