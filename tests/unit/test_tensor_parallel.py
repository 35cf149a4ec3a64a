"""TP=2 (two processes, gloo) gives the same greedy tokens as TP=1."""

from engine import LLM, SamplingParams
from tests.helpers import random_prompts


def test_tp2_matches_tp1_greedy():
    prompts = random_prompts(5, 512, 4, 60, seed=21)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    kwargs = dict(device="cpu", dtype="float32", seed=5, kv_cache_memory_bytes=16 << 20)
    with LLM("random:tiny-llama-tp", **kwargs) as tp1:
        expected = [o.token_ids for o in tp1.generate(prompts, params)]
    with LLM("random:tiny-llama-tp", tensor_parallel_size=2, **kwargs) as tp2:
        assert tp2.engine.runner.layout.num_kv_heads == 2  # each rank holds half the heads
        got = [o.token_ids for o in tp2.generate(prompts, params)]
    assert got == expected
