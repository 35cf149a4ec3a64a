"""Engine logits and greedy tokens against HF transformers on the same random weights."""

import pytest
import torch

from engine import LLM, SamplingParams
from tests.helpers import engine_prompt_logits, random_prompts
from tests.hf_reference import hf_greedy, hf_logits, hf_model_like

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-llama-tp"]


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
