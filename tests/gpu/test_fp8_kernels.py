"""The FP8 Triton kernels on CUDA at the Llama-3.1-8B projection shapes (the cases of
tests/fp8_kernel_cases.py: GEMV, quantization, block-wise GEMM, the Linear choosing them); an
FP8 engine whose batch-1 decode runs the FP8 GEMV inside CUDA graphs giving the tokens it gives
without graphs; a block-format checkpoint kept FP8 on CUDA, near its eager path."""

import pytest
import torch

from tests.fp8_kernel_cases import (
    check_block_gemm,
    check_block_linear,
    check_gemv,
    check_linear,
    check_quantize_rows,
    check_silu_quantize_rows,
)

pytestmark = pytest.mark.gpu


def test_quantize_rows_matches_the_torch_quantization():
    check_quantize_rows(torch.device("cuda"), big=True)


def test_silu_quantization_matches_silu_mul_then_quantize_rows():
    check_silu_quantize_rows(torch.device("cuda"), big=True)


def test_fp8_gemv_matches_the_dequantized_product():
    check_gemv(torch.device("cuda"), big=True)


def test_fp8_linear_picks_the_kernels():
    check_linear(torch.device("cuda"))


def test_block_gemm_matches_the_dequantized_product():
    check_block_gemm(torch.device("cuda"), big=True)


def test_block_fp8_linear_picks_the_kernels():
    check_block_linear(torch.device("cuda"))


def test_fp8_engine_batch1_gemv_under_cuda_graphs_matches_eager_launches():
    from engine import LLM, SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [[5, 40, 90, 7] * 5, [11, 3, 8] * 7]
    kw = dict(device="cuda", dtype="bfloat16", seed=3, kv_cache_memory_bytes=64 << 20,
              kv_cache_dtype="fp8")
    outs = []
    for graphs in (True, False):
        with LLM("random:tiny-llama-fp8", cuda_graphs=graphs, **kw) as llm:
            qkv = llm.engine.runner.model.model.layers[0].self_attn.qkv_proj
            assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.decode_gemv
            outs.append([llm.generate([p], greedy)[0].token_ids for p in prompts])  # batch 1
    assert outs[0] == outs[1]


def test_block_fp8_checkpoint_on_cuda_runs_the_kernels_close_to_eager(tmp_path):
    """The HF ``fp8`` block format stays FP8 on CUDA: with kernels (block GEMM over the prompt,
    GEMV at batch 1, inside CUDA graphs) its logits are the eager path's (weights dequantized at
    the call) up to the activations' e4m3 rounding (0.08; online FP8 weights alone moved the
    CPU logits by 0.022, test_fp8_weights)."""
    from engine import LLM, SamplingParams
    from tests.helpers import engine_prompt_logits, random_prompts

    write_checkpoint = pytest.importorskip("tests.unit.test_fp8_weights").write_checkpoint
    with LLM("random:tiny-llama", device="cpu", dtype="float32", seed=11,
             kv_cache_memory_bytes=8 << 20) as llm:
        config = llm.engine.model_config
        state = {k: v.detach().clone() for k, v in llm.engine.runner.model.hf_state_dict().items()}
    write_checkpoint(tmp_path, config, state, "block")
    prompt = random_prompts(1, config.vocab_size, 90, 90, seed=4)[0]
    kw = dict(device="cuda", dtype="bfloat16", kv_cache_memory_bytes=64 << 20)
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with LLM(str(tmp_path), **kw) as fused:
        mlp = fused.engine.runner.model.model.layers[0].mlp
        assert mlp.gate_up_proj.weight.dtype == torch.float8_e4m3fn  # 128-row parts: FP8
        assert mlp.gate_up_proj.fp8_kernels and mlp.gate_up_proj.decode_gemv
        got = engine_prompt_logits(fused.engine, prompt)
        tokens = fused.generate([prompt], greedy)[0].token_ids
    with LLM(str(tmp_path), fused_kernels=False, cuda_graphs=False, **kw) as eager:
        ref = engine_prompt_logits(eager.engine, prompt)
    assert len(tokens) == 8
    diff = (got - ref).abs().max().item()
    assert 0 < diff < 0.08, diff
