"""FP8 on CUDA against the CPU-path reference: the RoPE+KV-write kernel quantizing into an FP8
cache, the paged decode kernel reading one, the _scaled_mm linear against its dequantized
weight, and an engine with both against the eager path."""

import pytest
import torch

from engine.model.config import ModelConfig, RopeScaling
from engine.model.layers import kv_quant
from engine.model.layers.attention import AttentionMetadata, _batched_decode_attention, write_kv
from engine.model.layers.rope import RotaryEmbedding

pytestmark = pytest.mark.gpu
FP8 = torch.float8_e4m3fn


@pytest.mark.parametrize("num_tokens", [1, 300])
def test_rope_kv_kernel_writes_what_the_eager_fp8_write_stores(num_tokens):
    from engine.kernels.rope_kv import rope_and_write_kv

    dev, dtype = torch.device("cuda"), torch.bfloat16
    hq, hkv, d, block, blocks = 8, 2, 128, 16, 64
    config = ModelConfig(model_type="llama", vocab_size=100, hidden_size=hq * d,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=hq,
                         num_key_value_heads=hkv, head_dim=d, rope_theta=500000.0,
                         rope_scaling=RopeScaling())
    rope = RotaryEmbedding(config, 4096).to(dev)
    g = torch.Generator(device=dev).manual_seed(num_tokens)
    qkv = (4 * torch.randn(num_tokens, (hq + 2 * hkv) * d, generator=g, device=dev)).to(dtype)
    positions = torch.randint(0, 4096, (num_tokens,), generator=g, device=dev)
    slots = torch.randperm(blocks * block, generator=g, device=dev)[:num_tokens]
    shape = (blocks, hkv, 1, 2, block, d)

    def split(t):
        q, k, v = t.split([hq * d, hkv * d, hkv * d], dim=-1)
        return (q.reshape(num_tokens, hq, d), k.reshape(num_tokens, hkv, d),
                v.reshape(num_tokens, hkv, d))

    scales = (0.5, 0.125)
    eager = torch.zeros(shape, dtype=FP8, device=dev)
    q, k, v = split(qkv.clone())
    q_ref, k_ref = rope(positions, q, k)
    write_kv(eager[:, :, 0, 0], eager[:, :, 0, 1], k_ref, v, slots, block, *scales)
    fused = torch.zeros(shape, dtype=FP8, device=dev)
    q, k, v = split(qkv.clone())
    rope_and_write_kv(q, k, v, positions, rope.cos_table, rope.sin_table, fused[:, :, 0, 0],
                      fused[:, :, 0, 1], slots, block, *scales)
    assert torch.equal(fused[:, :, :, 1].view(torch.uint8), eager[:, :, :, 1].view(torch.uint8))
    # k: the kernel's rotation rounds once (eager three times), so a value may sit one bf16
    # step away and then, rarely, one e4m3 step: compare dequantized, within one e4m3 step.
    kf = kv_quant.dequantize(fused[:, :, :, 0], scales[0], torch.float32)
    ke = kv_quant.dequantize(eager[:, :, :, 0], scales[0], torch.float32)
    # As in test_rope_kv_kernel: rotations that cancel differ by an absolute bf16 step of the
    # inputs' scale (2 eps x the largest input), then by one e4m3 step of what is stored.
    atol = 2 * torch.finfo(dtype).eps * qkv.abs().max().item() * 9 / 8 + 2.0 ** -9 * scales[0]
    assert ((kf - ke).abs() <= ke.abs() / 8 + atol).all()
    assert (kf == ke).float().mean() > 0.99


@pytest.mark.parametrize("splits", [4, 1])  # 1: the 128-token iterations of one split
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_kernel_reads_fp8_cache_like_the_reference(dtype, splits):
    from engine.kernels.decode_attention import paged_decode_attention

    dev = torch.device("cuda")
    num_seqs, hq, hkv, d, block, blocks = 5, 8, 2, 128, 16, 128
    g = torch.Generator(device=dev).manual_seed(0)
    cache = (2 * torch.randn(blocks, hkv, 1, 2, block, d, generator=g, device=dev)).to(FP8)
    k_cache, v_cache = cache[:, :, 0, 0], cache[:, :, 0, 1]
    lens = torch.tensor([1, 17, 200, 333, 64], dtype=torch.int32, device=dev)
    max_blocks = (int(lens.max()) + block - 1) // block
    tables = torch.randperm(blocks, generator=g, device=dev)[:num_seqs * max_blocks]
    tables = tables.reshape(num_seqs, max_blocks).to(torch.int32)
    q = torch.randn(num_seqs, hq, d, generator=g, device=dev).to(dtype)
    meta = AttentionMetadata(slot_mapping=torch.zeros(1, device=dev), query_start_loc=[],
                             seq_lens=lens.tolist(), block_tables=[], block_size=block,
                             block_table_tensor=tables, seq_lens_tensor=lens)
    ref = _batched_decode_attention(q, k_cache, v_cache, meta, d ** -0.5, (0.5, 0.25))
    got = paged_decode_attention(q, k_cache, v_cache, tables, lens, d ** -0.5, splits, 0.5,
                                 0.25)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


def test_scaled_mm_linear_matches_its_dequantized_weight():
    """Per-token FP8 activations are the only difference: within 4% of the output's scale
    (e4m3 rounds each activation by up to 1/16)."""
    from engine.model.layers.fp8_linear import dequantize, quantize_online
    from engine.model.layers.linear import Linear

    dev = torch.device("cuda")
    layer = Linear(1024, 3072, bias=True, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
        layer.bias.normal_(0, 0.1)
    quantize_online(layer)
    w = dequantize(layer.weight.data, layer.weight_scale.data, "channel", torch.float32)
    layer.method.process_weights_after_loading(layer)
    for rows in (1, 7, 64, 1000):
        x = torch.randn(rows, 1024, device=dev, dtype=torch.bfloat16)
        got = layer(x).float()
        ref = x.float() @ w.t() + layer.bias.float()
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 0.04 * ref.abs().max()


def test_engine_with_fp8_weights_and_kv_runs_fused_like_eager():
    from engine import LLM, SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [[5 + i, 40, 90 + i, 7] * (3 + i) for i in range(4)]
    kw = dict(device="cuda", dtype="float32", seed=3, kv_cache_memory_bytes=64 << 20,
              kv_cache_dtype="fp8")
    with LLM("random:tiny-llama", **kw) as fused:
        a = [o.token_ids for o in fused.generate(prompts, greedy)]
    with LLM("random:tiny-llama", fused_kernels=False, cuda_graphs=False, **kw) as eager:
        b = [o.token_ids for o in eager.generate(prompts, greedy)]
    assert a == b
    with LLM("random:tiny-llama-fp8", **dict(kw, dtype="bfloat16")) as fp8:
        out = fp8.generate(prompts, greedy)
        assert fp8.engine.runner.model.model.layers[0].self_attn.qkv_proj.weight.dtype == \
            torch.float8_e4m3fn
        assert all(len(o.token_ids) == 24 for o in out)


def test_skinny_gemm_linear_matches_scaled_mm_linear(monkeypatch):
    """The FP8 linear at 2-64 rows with the skinny GEMM gives _scaled_mm's output within 1% of
    the output's scale (same FP8 operands, fp32 accumulation in another order)."""
    from engine.model.layers import fp8_linear
    from engine.model.layers.fp8_linear import quantize_online
    from engine.model.layers.linear import Linear

    dev = torch.device("cuda")
    outs = {}
    for skinny in (False, True):
        monkeypatch.setattr(fp8_linear, "SKINNY_GEMM", skinny)
        torch.manual_seed(0)
        layer = Linear(4096, 6144, bias=False, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            layer.weight.normal_(0, 0.02)
        quantize_online(layer)
        layer.method.process_weights_after_loading(layer)
        layer.method.use_fused_kernels(layer)
        assert (layer.skinny_tiles is not None) == skinny
        x = torch.randn(64, 4096, device=dev, dtype=torch.bfloat16, generator=torch.Generator(
            device=dev).manual_seed(1))
        outs[skinny] = [layer(x[:rows]).float() for rows in (2, 7, 33, 64)]
    for ref, got in zip(outs[False], outs[True], strict=True):
        assert (got - ref).abs().max() <= 0.01 * ref.abs().max()


def test_norm_handing_quantized_rows_to_the_fp8_linear_changes_nothing(monkeypatch):
    """The fused add+RMSNorm quantizing its output for the FP8 linear after it, and SiLU*mul
    quantized by the down projection's kernel (``fp8_linear.FUSED_ACTIVATION_QUANT``), give
    the tokens and logprobs the separate quantization kernels give: the same operations, in
    the same order."""
    from engine import LLM, SamplingParams
    from engine.model.layers import fp8_linear

    prompts = [[5 + i, 40, 90 + i, 7] * (3 + i) for i in range(12)]
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    kw = dict(device="cuda", dtype="bfloat16", seed=3, kv_cache_memory_bytes=256 << 20,
              kv_cache_dtype="fp8")
    monkeypatch.setattr(fp8_linear, "FUSED_ACTIVATION_QUANT", True)
    with LLM("random:small-llama-fp8", **kw) as llm:
        layer = llm.engine.runner.model.model.layers[0]
        assert layer.input_layernorm.feeds[0] is layer.self_attn.qkv_proj
        handed = [o.token_ids + [lp.logprob for lp in o.logprobs]
                  for o in llm.generate(prompts, greedy)]
        monkeypatch.setattr(fp8_linear, "FUSED_ACTIVATION_QUANT", False)
        llm.engine.pool.reset_prefix_cache()
        llm.engine.runner.graphs.capture()
        apart = [o.token_ids + [lp.logprob for lp in o.logprobs]
                 for o in llm.generate(prompts, greedy)]
    assert handed == apart
