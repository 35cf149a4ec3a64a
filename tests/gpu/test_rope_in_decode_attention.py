"""Decode attention that rotates q/k and writes the new token's KV itself (``new_token``,
engine/kernels/decode_attention.py) against rope_kv's kernel followed by the plain decode
kernel (CUDA only): bf16 and FP8 caches, Qwen3's q/k norms, one split and several."""

import pytest
import torch

from engine.model.config import ModelConfig, RopeScaling
from engine.model.layers.rope import RotaryEmbedding

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("splits", [1, 4, 32])
def test_rope_in_decode_attention_matches_rope_kv_then_attention(cache_dtype, qk_norm, splits):
    from engine.kernels.decode_attention import NewToken, paged_decode_attention
    from engine.kernels.rope_kv import rope_and_write_kv

    dev = torch.device("cuda")
    hq, hkv, d, block, blocks = 32, 4, 128, 16, 512
    config = ModelConfig(model_type="llama", vocab_size=100, hidden_size=hq * d,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=hq,
                         num_key_value_heads=hkv, head_dim=d, rope_theta=500000.0,
                         rope_scaling=RopeScaling())
    rope = RotaryEmbedding(config, 4096).to(dev)
    g = torch.Generator(device=dev).manual_seed(splits)
    lens = torch.tensor([1, 17, 1024, 333, 64, 900], dtype=torch.int32, device=dev)
    num_seqs = len(lens)
    # Each sequence its own blocks, as the engine gives them (shared prefix blocks are never
    # written): two new tokens at one slot would make the result depend on the write order.
    tables = torch.randperm(blocks, generator=g, device=dev)[:num_seqs * 64].view(num_seqs, 64)
    tables = tables.to(torch.int32)
    pos = (lens - 1).long()
    slots = tables[torch.arange(num_seqs, device=dev), pos // block].long() * block + pos % block
    cache = torch.randn(blocks, hkv, 2, block, d, generator=g, device=dev).to(cache_dtype)
    qkv = torch.randn(num_seqs, (hq + 2 * hkv) * d, generator=g, device=dev).bfloat16()
    norm = None
    if qk_norm:
        norm = (torch.rand(d, generator=g, device=dev).bfloat16() + 0.5,
                torch.rand(d, generator=g, device=dev).bfloat16() + 0.5, 1e-6)
    k_scale, v_scale = (0.5, 0.25) if cache_dtype == torch.float8_e4m3fn else (1.0, 1.0)

    def views(caches, t):
        q, k, v = t.split([hq * d, hkv * d, hkv * d], dim=-1)
        return (caches[:, :, 0], caches[:, :, 1], q.reshape(num_seqs, hq, d),
                k.reshape(num_seqs, hkv, d), v.reshape(num_seqs, hkv, d))

    ref_cache = cache.clone()
    kc, vc, q, k, v = views(ref_cache, qkv.clone())
    rope_and_write_kv(q, k, v, pos, rope.cos_table, rope.sin_table, kc, vc, slots, block,
                      k_scale, v_scale, norm)
    ref = paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5, splits, k_scale, v_scale)

    got_cache = cache.clone()
    raw = qkv.clone()
    kc, vc, q, k, v = views(got_cache, raw)
    new = NewToken(k, v, pos, rope.cos_table, rope.sin_table, slots, norm)
    got = paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5, splits, k_scale, v_scale,
                                 new_token=new)

    assert torch.equal(raw, qkv)  # the projection's output is read, not rotated in place
    # Only the new tokens' rows were written, and as rope_kv writes them: the same roundings,
    # up to the compiler contracting the rotation's multiply-adds differently (one rounding
    # step of the operands' scale, then e4m3's rounding for an FP8 cache).
    changed = (got_cache.view(torch.uint8) != cache.view(torch.uint8)).any(-1).any(1)
    expected = (ref_cache.view(torch.uint8) != cache.view(torch.uint8)).any(-1).any(1)
    assert torch.equal(changed, expected)
    written = got_cache.float() - ref_cache.float()
    step = 0.02 if cache_dtype == torch.bfloat16 else 0.13
    assert written.abs().max().item() <= step * (ref_cache.float().abs().max().item())
    mismatched = (got_cache.view(torch.uint8) != ref_cache.view(torch.uint8)).sum().item()
    assert mismatched <= 0.01 * num_seqs * hkv * 2 * d  # nearly every element bit for bit
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
