"""The FP8 Triton kernels on CUDA at the Llama-3.1-8B projection shapes (the cases of
tests/fp8_kernel_cases.py), and an FP8 engine whose batch-1 decode runs the FP8 GEMV inside
CUDA graphs giving the tokens it gives without graphs."""

import pytest
import torch

from tests.fp8_kernel_cases import check_gemv, check_linear, check_quantize_rows

pytestmark = pytest.mark.gpu


def test_quantize_rows_is_bitwise_the_torch_quantization():
    check_quantize_rows(torch.device("cuda"), big=True)


def test_fp8_gemv_matches_the_dequantized_product():
    check_gemv(torch.device("cuda"), big=True)


def test_fp8_linear_picks_the_kernels():
    check_linear(torch.device("cuda"))


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
