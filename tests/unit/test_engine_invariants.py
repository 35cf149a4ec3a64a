"""Prefix caching, batching and preemption change nothing but speed; blocks always come back."""

import pytest

from engine import LLM, SamplingParams
from engine.core.sequence import FinishReason
from tests.helpers import random_prompts

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    llm = LLM("random:tiny-llama", device="cpu", dtype="float32", seed=3,
              kv_cache_memory_bytes=16 << 20, max_num_batched_tokens=64)
    yield llm
    llm.shutdown()


def all_blocks_free(llm) -> bool:
    pool = llm.engine.pool
    return pool.num_free_blocks == pool.num_blocks and not llm.engine.has_unfinished()


def test_batching_changes_nothing(llm):
    prompts = random_prompts(16, 512, 3, 90, seed=11)
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    together = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert together == alone
    assert all_blocks_free(llm)


def test_prefix_caching_reuses_blocks_and_changes_nothing(llm):
    shared = random_prompts(1, 512, 48, 48, seed=12)[0]
    a = shared + [7, 8, 9]
    b = shared + [10, 11]
    first = llm.generate([a], GREEDY)[0]
    before = llm.engine.stats().prefix_hit_tokens
    second = llm.generate([b], GREEDY)[0]
    assert second.num_cached_tokens == 48  # three full 16-token blocks reused
    assert llm.engine.stats().prefix_hit_tokens - before == 48
    llm.engine.pool.reset_prefix_cache()
    cold = llm.generate([b], GREEDY)[0]
    assert cold.num_cached_tokens == 0
    assert cold.token_ids == second.token_ids
    assert first.token_ids != second.token_ids or a == b
    assert all_blocks_free(llm)


def test_preemption_changes_nothing():
    prompts = random_prompts(6, 512, 20, 40, seed=13)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    roomy = LLM("random:tiny-llama", device="cpu", seed=3, kv_cache_memory_bytes=16 << 20)
    expected = [o.token_ids for o in roomy.generate(prompts, params)]
    # 12 blocks of 16 tokens cannot hold 6 sequences of up to 80 tokens at once.
    block_bytes = roomy.engine.runner.layout.bytes_per_block
    tight = LLM("random:tiny-llama", device="cpu", seed=3, kv_cache_memory_bytes=12 * block_bytes)
    got = [o.token_ids for o in tight.generate(prompts, params)]
    assert tight.engine.stats().num_preemptions > 0
    assert got == expected
    assert all_blocks_free(tight)


def test_abort_at_any_point_returns_blocks(llm):
    engine = llm.engine
    prompts = random_prompts(4, 512, 60, 100, seed=14)
    for abort_after_steps in range(0, 8):
        ids = [engine.add_request(p, GREEDY) for p in prompts]
        for _ in range(abort_after_steps):
            engine.step()
        for rid in ids:
            engine.abort_request(rid)
        assert all_blocks_free(llm), abort_after_steps


def test_stop_token_ids_max_tokens_and_seeded_sampling(llm):
    prompt = random_prompts(1, 512, 10, 10, seed=15)[0]
    free_run = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10,
                                                     ignore_eos=True))[0]
    stop_at = free_run.token_ids[4]
    stopped = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10,
                                                    stop_token_ids=[stop_at]))[0]
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == free_run.token_ids[: free_run.token_ids.index(stop_at) + 1]
    assert free_run.finish_reason == FinishReason.LENGTH and len(free_run.token_ids) == 10
    seeded = SamplingParams(temperature=1.0, max_tokens=12, seed=42, ignore_eos=True)
    runs = [llm.generate([prompt], seeded)[0].token_ids for _ in range(2)]
    assert runs[0] == runs[1]


def test_bad_requests_are_refused_cleanly(llm):
    with pytest.raises(ValueError, match="at least one token"):
        llm.engine.add_request([], GREEDY)
    with pytest.raises(ValueError, match="token ids must be in"):
        llm.engine.add_request([10**6], GREEDY)
    with pytest.raises(ValueError, match="context limit"):
        llm.engine.add_request([5] * 5000, GREEDY)
    assert all_blocks_free(llm)
