"""Engine logits and greedy tokens against HF transformers on the same random weights."""

import pytest
import torch

from engine import LLM, SamplingParams
from tests.helpers import engine_prompt_logits, random_prompts
from tests.hf_reference import hf_greedy, hf_logits, hf_model_like

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-llama-tp",
            "tiny-qwen3-moe", "tiny-qwen2-moe"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    llm = LLM(f"random:{request.param}", device="cpu", dtype="float32", seed=7,
              kv_cache_memory_bytes=16 << 20)
    yield llm, hf_model_like(llm.engine)
    llm.shutdown()


def test_prompt_logits_match_hf(pair):
    llm, hf = pair
    # 150 tokens: crosses the tiny Llama's 64-position rope-scaling wavelength and 9 blocks.
    prompt = random_prompts(1, llm.engine.model_config.vocab_size, 150, 150, seed=1)[0]
    ours = engine_prompt_logits(llm.engine, prompt)
    ref = hf_logits(hf, prompt)
    assert (ours - ref).abs().max().item() < 1e-4


def test_greedy_64_tokens_match_hf_generate(pair):
    llm, hf = pair
    vocab = llm.engine.model_config.vocab_size
    for prompt in random_prompts(2, vocab, 5, 40, seed=2):
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
        assert out[0].token_ids == hf_greedy(hf, prompt, 64)


def test_logprobs_match_hf_distribution(pair):
    llm, hf = pair
    prompt = random_prompts(1, llm.engine.model_config.vocab_size, 20, 20, seed=3)[0]
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, logprobs=5))[0]
    ref = torch.log_softmax(hf_logits(hf, prompt)[-1], -1)
    lp = out.logprobs[0]
    assert abs(lp.logprob - ref[lp.token_id].item()) < 1e-4
    assert [t for t, _ in lp.top] == ref.topk(5).indices.tolist()


def test_fused_projections_change_nothing():
    from engine.model.llama import fuse_projections

    with LLM("random:tiny-qwen2", device="cpu", dtype="float32", seed=7,
             kv_cache_memory_bytes=16 << 20) as llm:
        prompt = random_prompts(1, 512, 40, 40, seed=4)[0]
        before = engine_prompt_logits(llm.engine, prompt)
        state = llm.engine.runner.model.hf_state_dict()
        fuse_projections(llm.engine.runner.model)
        after = engine_prompt_logits(llm.engine, prompt)
        assert (before - after).abs().max().item() < 1e-5
        fused_state = llm.engine.runner.model.hf_state_dict()
        assert fused_state.keys() == state.keys()
        assert all(torch.equal(fused_state[k], state[k]) for k in state)
