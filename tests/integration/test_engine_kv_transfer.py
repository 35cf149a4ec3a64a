"""Two engines in two processes, joined by real NIXL: prefill in one, decode in the other."""

import time

import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine.core.sequence import FinishReason
from tests.engine_peer import EnginePeer
from tests.helpers import random_prompts

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

MODEL = dict(model="random:tiny-llama", device="cpu", dtype="float32", seed=3,
             kv_cache_memory_bytes=16 << 20)
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def owner():
    peer = EnginePeer(kv_lease_s=20.0, **MODEL)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def receiver():
    engine = LLMEngine(EngineConfig(kv_transfer="nixl", kv_pull_timeout_s=5.0, **MODEL))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def overlapped_receiver():
    """A receiver with the overlapped decode loop (the CUDA default), forced on here on CPU:
    remote admissions joining launched steps, deferred frees, and pulls into freed blocks."""
    engine = LLMEngine(EngineConfig(kv_transfer="nixl", kv_pull_timeout_s=5.0,
                                    async_scheduling=True, **MODEL))
    yield engine
    engine.shutdown()


def run(engine, ids):
    out = {i: [] for i in ids}
    finish = {}
    deadline = time.time() + 60
    while engine.has_unfinished() and time.time() < deadline:
        for d in engine.step():
            out.setdefault(d.request_id, []).extend(d.new_token_ids)
            if d.finished:
                finish[d.request_id] = (d.finish_reason, d.error)
    return out, finish


def blocks_all_free(engine) -> bool:
    return engine.pool.num_free_blocks == engine.pool.num_blocks


@pytest.mark.parametrize("which", ["receiver", "overlapped_receiver"])
def test_disaggregated_tokens_equal_single_engine(owner, which, request):
    receiver = request.getfixturevalue(which)
    released_before = owner.call("wait_free", 0.0)[3].leases_released
    prompts = random_prompts(6, 512, 5, 70, seed=31)
    shared = random_prompts(1, 512, 40, 40, seed=32)[0]
    prompts += [shared + p[:7] for p in random_prompts(3, 512, 7, 7, seed=33)]
    with LLM(**MODEL) as single:
        expected = [o.token_ids for o in single.generate(prompts, GREEDY)]
    prefilled = owner.call("prefill", prompts)
    got = []
    # Two waves: the second wave's shared prefix is then cached on the receiver already.
    for wave in (range(0, 7), range(7, len(prompts))):
        ids = []
        for i in wave:
            first, handle, _ = prefilled[i]
            assert handle.num_tokens == len(prompts[i])
            receiver.add_prefilled_request(prompts[i], first, handle, GREEDY, request_id=f"p{i}")
            ids.append(f"p{i}")
        out, finish = run(receiver, ids)
        got += [[prefilled[int(i[1:])][0]] + out[i] for i in ids]
        assert all(reason == FinishReason.LENGTH for reason, _ in finish.values())
    assert got == expected
    transfer = receiver.stats().transfer
    assert transfer.pulls_ok >= 1 and transfer.pulls_failed == 0
    assert receiver.kv.num_prefix_hit_tokens > 0  # later shared-prefix requests hit locally
    assert blocks_all_free(receiver)
    held, free, total, owner_transfer = owner.call("wait_free", 10.0)
    assert held == 0 and free == total  # every lease was released by the receiver
    assert owner_transfer.leases_released - released_before == len(prompts)
    if receiver.overlap is not None:
        assert receiver.overlap.num_steps > 0


def test_lease_expiry_frees_blocks_when_nobody_pulls():
    peer = EnginePeer(kv_lease_s=0.3, **MODEL)
    try:
        prefilled = peer.call("prefill", random_prompts(2, 512, 30, 30, seed=41))
        assert all(h is not None for _, h, _ in prefilled)
        held, free, total, transfer = peer.call("wait_free", 10.0)
        assert held == 0 and free == total
        assert transfer.leases_expired == 2
    finally:
        peer.stop()


def test_killed_owner_fails_the_request_and_frees_receiver_blocks(receiver):
    peer = EnginePeer(kv_lease_s=20.0, **MODEL)
    prompt = random_prompts(1, 512, 60, 60, seed=51)[0]
    (first, handle, _), = peer.call("prefill", [prompt])
    peer.process.kill()
    peer.process.join()
    started = time.time()
    receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="orphan")
    out, finish = run(receiver, ["orphan"])
    assert finish["orphan"][0] == FinishReason.ERROR
    assert "unreachable" in finish["orphan"][1] or "failed" in finish["orphan"][1]
    assert time.time() - started < 10
    assert blocks_all_free(receiver)


def test_abort_while_pulling_frees_blocks(owner, receiver):
    prompt = random_prompts(1, 512, 50, 50, seed=61)[0]
    (first, handle, _), = owner.call("prefill", [prompt])
    receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="to-abort")
    receiver.step()  # the pull starts
    assert receiver.abort_request("to-abort")
    deadline = time.time() + 10
    while receiver.has_unfinished() and time.time() < deadline:
        receiver.step()
    assert blocks_all_free(receiver)
    held, _, _, _ = owner.call("wait_free", 10.0)
    assert held == 0


def test_tp2_receiver_fed_by_tp1_owner_gives_single_engine_tokens():
    model = dict(MODEL, model="random:tiny-llama-tp", seed=5)
    prompts = random_prompts(5, 512, 10, 60, seed=71)
    with LLM(**model) as single:
        expected = [o.token_ids for o in single.generate(prompts, GREEDY)]
    peer = EnginePeer(kv_lease_s=20.0, **model)
    receiver = LLMEngine(EngineConfig(kv_transfer="nixl", tensor_parallel_size=2, **model))
    try:
        prefilled = peer.call("prefill", prompts)
        ids = []
        for i, (prompt, (first, handle, _)) in enumerate(zip(prompts, prefilled, strict=True)):
            receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id=f"tp{i}")
            ids.append(f"tp{i}")
        out, _ = run(receiver, ids)
        assert [[p[0]] + out[i] for p, i in zip(prefilled, ids, strict=True)] == expected
        assert receiver.stats().transfer.pulls_ok == len(prompts)
        assert blocks_all_free(receiver)
    finally:
        receiver.shutdown()
        peer.stop()


def test_first_token_that_ends_the_request_finishes_it_and_releases_the_lease(owner, receiver):
    """A first token that already stops the request here (max_tokens 1 on this side) must end
    the stream with a finished delta, not leave it open, and free the owner's blocks."""
    prompt = random_prompts(1, 512, 40, 40, seed=81)[0]
    (first, handle, _), = owner.call("prefill", [prompt])
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    done = receiver.add_prefilled_request(prompt, first, handle, one,
                                          request_id="ends-at-first")
    assert done is not None and done.finished and done.finish_reason == FinishReason.LENGTH
    assert done.new_token_ids == []
    assert not receiver.has_unfinished() and blocks_all_free(receiver)
    held, _, _, _ = owner.call("wait_free", 10.0)
    assert held == 0
