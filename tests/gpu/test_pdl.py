"""Programmatic dependent launch (engine/kernels/pdl.py) changes when a kernel may start, never
what it computes: the same engine, its CUDA graphs captured with PDL and then without, gives
bit-identical logits and tokens (bf16 dense, FP8 weights with an FP8 KV cache, MoE; batch 1
through the GEMVs and a 12-row batch through the skinny GEMM and grouped kernels)."""

import pytest
import torch

from engine import LLM, SamplingParams
from tests.helpers import random_prompts

pytestmark = pytest.mark.gpu


def _greedy(llm, prompts):
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=2)
    outs = llm.generate(prompts, params)
    return [(o.token_ids, list(o.logprobs)) for o in outs]


MODELS = [  # (model, LLM keyword arguments): the decode step's three kinds of kernels
    ("random:small-llama", {}),
    ("random:small-llama-fp8", {"kv_cache_dtype": "fp8"}),
    ("random:small-qwen3-moe", {}),
]


def outputs_on_and_off(model: str, extra: dict, module, flag: str, monkeypatch):
    """Greedy tokens and logprobs of one engine with ``module.flag`` on, then with its graphs
    captured again with the flag off: batch 1 (the GEMVs) and 12 rows (skinny GEMM, grouped
    MoE kernels)."""
    monkeypatch.setattr(module, flag, True)
    with LLM(model, device="cuda", dtype="bfloat16", seed=4, kv_cache_memory_bytes=256 << 20,
             **extra) as llm:
        one = random_prompts(1, 4096, 40, 40, seed=2)
        many = random_prompts(12, 4096, 30, 300, seed=3)
        on = _greedy(llm, one) + _greedy(llm, many)
        monkeypatch.setattr(module, flag, False)
        llm.engine.pool.reset_prefix_cache()
        llm.engine.runner.graphs.capture()
        off = _greedy(llm, one) + _greedy(llm, many)
    return on, off


@pytest.mark.parametrize("model,extra", MODELS)
def test_graphs_with_and_without_pdl_give_identical_outputs(model, extra, monkeypatch):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs a Hopper or later GPU")
    from engine.kernels import pdl  # needs Triton, which CPU installs lack

    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.enabled(torch.device("cuda")), "PDL should be on for this GPU"
    with_pdl, without = outputs_on_and_off(model, extra, pdl, "ENABLED", monkeypatch)
    assert with_pdl == without
