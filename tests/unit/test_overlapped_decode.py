"""Overlapped decode (engine/overlap.py) gives exactly the synchronous engine's results.

On CPU nothing really overlaps (every op is synchronous), but the bookkeeping is the same as on
a GPU: placeholders, feeding sampled tokens into the next step, the step wasted on a sequence
that stops, deferred block frees, and draining before any step that cannot overlap.
"""


from engine import LLM, LLMEngine, SamplingParams
from engine.config import EngineConfig
from tests.helpers import random_prompts

KWARGS = dict(device="cpu", dtype="float32", seed=3, kv_cache_memory_bytes=8 << 20)


def generate(async_scheduling, prompts, params, model="random:tiny-llama", **kwargs):
    with LLM(model, async_scheduling=async_scheduling, **{**KWARGS, **kwargs}) as llm:
        outs = llm.generate(prompts, params)
        engine = llm.engine
        assert engine.pool.num_free_blocks == engine.pool.num_blocks  # nothing leaked
        overlapped = engine.overlap.num_steps if engine.overlap is not None else 0
        return [(o.token_ids, o.finish_reason, o.text) for o in outs], overlapped


def assert_overlap_matches_sync(prompts, params, **kwargs):
    """Same outputs with and without the overlap; returns them and the overlapped steps."""
    expected, _ = generate(False, prompts, params, **kwargs)
    got, overlapped = generate(True, prompts, params, **kwargs)
    assert got == expected
    return got, overlapped


def test_greedy_mixed_lengths_match_sync():
    prompts = random_prompts(6, 512, 3, 40, seed=1)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
              for n in (1, 2, 3, 5, 17, 30)]
    _, overlapped = assert_overlap_matches_sync(prompts, params)
    assert overlapped > 10


def test_stop_tokens_mid_sequence_match_sync():
    prompts = random_prompts(5, 512, 3, 40, seed=2)
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    reference, _ = generate(False, prompts, plain)
    # Stop each request on a token it would produce in the middle: the overlapped engine has
    # already launched the next step for it when it learns that.
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                             stop_token_ids=[tokens[len(tokens) // 2]])
              for tokens, _, _ in reference]
    got, overlapped = assert_overlap_matches_sync(prompts, params)
    assert overlapped > 0
    assert all(len(tokens) < 24 for tokens, _, _ in got)


def test_seeded_sampling_matches_sync():
    prompts = random_prompts(4, 512, 5, 30, seed=3)
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=s, max_tokens=20,
                             ignore_eos=True) for s in range(4)]
    _, overlapped = assert_overlap_matches_sync(prompts, params)
    assert overlapped > 0


def test_rows_needing_host_data_fall_back_to_sync():
    prompts = random_prompts(3, 512, 5, 30, seed=4)
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                             frequency_penalty=0.5),
              SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)]
    # The third row alone could overlap, but the batch is not split: every step synchronous.
    _, overlapped = assert_overlap_matches_sync(prompts, params)
    assert overlapped == 0


def test_preemption_under_a_small_cache_matches_sync():
    # 24 blocks of 16 tokens (tiny-llama: 8 KiB a block) for 8 requests growing to ~70
    # tokens: the cache runs out, the engine drains and preempts synchronously, then overlaps.
    prompts = random_prompts(8, 512, 20, 40, seed=5)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    results = []
    for engine in both_loops(kv_cache_memory_bytes=24 * 8192):
        assert engine.pool.num_blocks == 24
        results.append(run_to_completion(engine, prompts, params))
        assert engine.scheduler.num_preemptions > 0
    assert results[1] == results[0]


def both_loops(**config):
    """A synchronous engine, then an overlapped one; after each use: no block leaked, and the
    overlapped one did overlap."""
    for async_scheduling in (False, True):
        engine = LLMEngine(EngineConfig(model="random:tiny-llama",
                                        async_scheduling=async_scheduling, **{**KWARGS, **config}))
        try:
            yield engine
            assert engine.pool.num_free_blocks == engine.pool.num_blocks
            assert async_scheduling is False or engine.overlap.num_steps > 0
        finally:
            engine.shutdown()


def run_to_completion(engine, prompts, params, abort_after=None):
    ids = [engine.add_request(p, params) for p in prompts]
    tokens = {rid: [] for rid in ids}
    steps = 0
    while engine.has_unfinished():
        for delta in engine.step():
            tokens[delta.request_id].extend(delta.new_token_ids)
        steps += 1
        if abort_after is not None and steps == abort_after:
            engine.abort_request(ids[0])
    return [tokens[rid] for rid in ids]


def test_abort_while_a_step_is_in_flight_frees_its_blocks():
    prompts = random_prompts(3, 512, 20, 40, seed=6)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    results = [run_to_completion(engine, prompts, params, abort_after=6)
               for engine in both_loops()]
    # The aborted request got the tokens reported before the abort (one step later when
    # overlapped: its reports lag a step); the others are untouched.
    assert results[1][1:] == results[0][1:]
    assert results[0][0] == results[1][0][: len(results[0][0])] or \
        results[1][0] == results[0][0][: len(results[1][0])]


def test_requests_arriving_mid_decode_match_sync():
    prompts = random_prompts(4, 512, 5, 30, seed=7)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    results = []
    for engine in both_loops():
        ids = [engine.add_request(prompts[0], params)]
        tokens = {}
        step = 0
        while engine.has_unfinished():
            for delta in engine.step():
                tokens.setdefault(delta.request_id, []).extend(delta.new_token_ids)
            step += 1
            if step in (3, 5, 9):  # joins while the first request decodes
                ids.append(engine.add_request(prompts[len(ids)], params))
        results.append([tokens[r] for r in ids])
    assert results[1] == results[0]


def test_tp2_overlapped_matches_tp1():
    prompts = random_prompts(4, 512, 4, 60, seed=21)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    expected, _ = generate(False, prompts, params, model="random:tiny-llama-tp")
    got, overlapped = generate(True, prompts, params, model="random:tiny-llama-tp",
                               tensor_parallel_size=2)  # against TP=1, synchronous
    assert overlapped > 0
    assert got == expected
