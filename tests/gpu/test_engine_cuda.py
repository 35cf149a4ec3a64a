"""The engine on CUDA (skipped without a CUDA GPU)."""

import pytest
import torch

from engine import LLM, SamplingParams
from tests.helpers import engine_prompt_logits, random_prompts
from tests.hf_reference import hf_greedy, hf_logits, hf_model_like

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_cuda_fp32_matches_hf(family):
    torch.backends.cuda.matmul.allow_tf32 = False
    with LLM(f"random:{family}", device="cuda", dtype="float32", seed=7,
             kv_cache_memory_bytes=64 << 20) as llm:
        hf = hf_model_like(llm.engine)  # on CPU, fp32: the reference
        prompt = random_prompts(1, 512, 150, 150, seed=1)[0]
        diff = (engine_prompt_logits(llm.engine, prompt).cpu() - hf_logits(hf, prompt)).abs().max()
        assert diff.item() < 1e-4
        out = llm.generate([prompt[:30]], SamplingParams(temperature=0, max_tokens=32,
                                                         ignore_eos=True))
        assert out[0].token_ids == hf_greedy(hf, prompt[:30], 32)


def test_cuda_bf16_batching_and_prefix_cache_consistent():
    with LLM("random:tiny-llama", device="cuda", dtype="bfloat16", seed=3,
             kv_cache_memory_bytes=64 << 20) as llm:
        prompts = random_prompts(8, 512, 3, 90, seed=11)
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        together = [o.token_ids for o in llm.generate(prompts, params)]
        assert all(len(t) == 16 for t in together)
        assert llm.engine.pool.num_free_blocks == llm.engine.pool.num_blocks


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_tp2_matches_tp1():
    prompts = random_prompts(4, 512, 4, 60, seed=21)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kwargs = dict(device="cuda", dtype="float32", seed=5, kv_cache_memory_bytes=64 << 20)
    with LLM("random:tiny-llama-tp", **kwargs) as tp1:
        expected = [o.token_ids for o in tp1.generate(prompts, params)]
    with LLM("random:tiny-llama-tp", tensor_parallel_size=2, **kwargs) as tp2:
        got = [o.token_ids for o in tp2.generate(prompts, params)]
    assert got == expected


def test_cuda_graph_decode_matches_eager():
    prompts = random_prompts(11, 512, 3, 200, seed=13)  # 11 rows: padded to the 16 bucket
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kwargs = dict(device="cuda", dtype="float32", seed=3, kv_cache_memory_bytes=64 << 20)
    with LLM("random:tiny-llama", cuda_graphs=False, **kwargs) as eager:
        expected = [o.token_ids for o in eager.generate(prompts, params)]
    with LLM("random:tiny-llama", **kwargs) as graphed:
        assert graphed.engine.runner.graphs is not None
        assert [o.token_ids for o in graphed.generate(prompts, params)] == expected


def test_fused_kernels_match_eager_ops():
    prompts = random_prompts(6, 512, 20, 120, seed=17)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kwargs = dict(device="cuda", dtype="float32", seed=3, kv_cache_memory_bytes=64 << 20)
    with LLM("random:tiny-qwen2", fused_kernels=False, **kwargs) as plain:
        expected = [o.token_ids for o in plain.generate(prompts, params)]
        plain_logits = engine_prompt_logits(plain.engine, prompts[0]).cpu()
    with LLM("random:tiny-qwen2", **kwargs) as fused:
        assert fused.engine.runner.model.fused_kernels
        logits = engine_prompt_logits(fused.engine, prompts[0]).cpu()
        assert (logits - plain_logits).abs().max().item() < 1e-4
        assert [o.token_ids for o in fused.generate(prompts, params)] == expected


def test_overlapped_decode_matches_sync_loop():
    """The overlapped loop on CUDA (graphs, pinned copies, events) against the synchronous one,
    with requests that stop on a token mid-way (the step launched after it is dropped)."""
    prompts = random_prompts(12, 512, 3, 200, seed=19)
    kwargs = dict(device="cuda", dtype="bfloat16", seed=3, kv_cache_memory_bytes=64 << 20)
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with LLM("random:tiny-llama", async_scheduling=False, **kwargs) as sync:
        reference = [o.token_ids for o in sync.generate(prompts, plain)]
        params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                 stop_token_ids=[t[len(t) // 2]]) for t in reference[:6]]
        params += [plain] * 6
        expected = [o.token_ids for o in sync.generate(prompts, params)]
    with LLM("random:tiny-llama", **kwargs) as overlapped:
        assert overlapped.engine.overlap is not None  # on by default on CUDA
        got = [o.token_ids for o in overlapped.generate(prompts, params)]
        assert overlapped.engine.overlap.num_steps > 0
        pool = overlapped.engine.pool
        assert pool.num_free_blocks == pool.num_blocks
    assert got == expected
