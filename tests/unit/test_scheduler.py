"""The scheduler and cache bookkeeping alone, on CPU, with no model: each step's "sampled"
token is a deterministic function of the sequence, so the test checks bookkeeping only."""

from common.sampling_params import SamplingParams
from engine.core.block_pool import BlockPool
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.scheduler import Scheduler, SchedulerConfig
from engine.core.sequence import FinishReason, Sequence
from kv_transfer.block_hash import BlockHasher


def make(num_blocks=64, budget=32, max_seqs=8, block_size=4):
    pool = BlockPool(num_blocks)
    kv = KVCacheManager(pool, BlockHasher(block_size))
    return Scheduler(SchedulerConfig(max_seqs, budget, max_model_len=512), kv), pool


def run_to_end(sched, max_steps=10_000):
    steps = []
    for _ in range(max_steps):
        batch = sched.schedule()
        if not batch.seqs:
            break
        assert batch.num_tokens <= sched.config.max_num_batched_tokens
        steps.append(batch)
        for seq in sched.update(batch):
            seq.append_token(seq.num_tokens % 97 + 3, None)
            reason = sched.check_token_stop(seq)
            if reason:
                sched.finish(seq, reason)
    return steps


def test_chunked_prefill_respects_budget_and_finishes():
    sched, pool = make(budget=8)
    seq = Sequence("a", list(range(3, 30)), SamplingParams(max_tokens=5))
    sched.add(seq)
    steps = run_to_end(sched)
    assert [b.num_new_tokens[0] for b in steps[:4]] == [8, 8, 8, 3]  # 27-token prompt in chunks
    assert seq.num_output_tokens == 5 and seq.finish_reason == FinishReason.LENGTH
    assert pool.num_free_blocks == pool.num_blocks


def test_preemption_by_recompute_loses_nothing():
    sched, pool = make(num_blocks=10, budget=64, block_size=4)
    seqs = [Sequence(str(i), list(range(3, 15)), SamplingParams(max_tokens=12)) for i in range(3)]
    for s in seqs:
        sched.add(s)
    run_to_end(sched)
    assert sched.num_preemptions > 0
    for s in seqs:
        assert s.num_output_tokens == 12, s
    assert pool.num_free_blocks == pool.num_blocks


def test_prefix_hit_is_counted_and_leaves_one_token_to_compute():
    sched, pool = make(block_size=4)
    prompt = list(range(3, 15))  # 12 tokens: 3 full blocks
    first = Sequence("a", prompt, SamplingParams(max_tokens=1))
    sched.add(first)
    run_to_end(sched)
    second = Sequence("b", prompt, SamplingParams(max_tokens=1))
    sched.add(second)
    batch = sched.schedule()
    # Blocks 0-1 hit; block 2 would cover the last token, which must be recomputed.
    assert second.num_cached_tokens == 8
    assert batch.num_new_tokens == [4]


def test_abort_anywhere_returns_blocks():
    sched, pool = make(budget=4)
    a = Sequence("a", list(range(3, 20)), SamplingParams(max_tokens=50))
    b = Sequence("b", list(range(3, 20)), SamplingParams(max_tokens=50))
    sched.add(a)
    sched.add(b)
    sched.update(sched.schedule())  # a is mid-prefill, b still waiting
    sched.finish(a, FinishReason.ABORT)
    sched.finish(b, FinishReason.ABORT)
    assert pool.num_free_blocks == pool.num_blocks
    assert sched.num_unfinished == 0


def test_prompt_larger_than_cache_is_refused():
    sched, _ = make(num_blocks=2, block_size=4)
    try:
        sched.add(Sequence("a", list(range(3, 20)), SamplingParams()))
    except ValueError as e:
        assert "KV blocks" in str(e)
    else:
        raise AssertionError("expected a ValueError")
