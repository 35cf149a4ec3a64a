"""The P/D state machine with two real engines in one process, joined by the in-process
reference connector and a fake clock: hold, lease, pull, release, abort, failure, expiry.

The NIXL version, with the engines in two processes, is tests/integration/test_engine_kv_transfer.py.
"""

import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine.core.sequence import FinishReason
from kv_transfer.inprocess_connector import InProcessConnector, InProcessFabric
from tests.helpers import random_prompts

MODEL = dict(model="random:tiny-llama", device="cpu", dtype="float32", seed=3,
             kv_cache_memory_bytes=16 << 20)
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
LEASE_S = 5.0
GRACE_S = 1.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pd_engine(fabric: InProcessFabric, clock: FakeClock, delay_polls: int = 0,
              **config) -> tuple[LLMEngine, InProcessConnector]:
    engine = LLMEngine(EngineConfig(kv_lease_s=LEASE_S, **{**MODEL, **config}))
    connector = InProcessConnector(fabric, engine.config.engine_id, engine.runner.kv_buffer,
                                   engine.runner.kv_compat(engine.source), clock=clock,
                                   lease_grace_s=GRACE_S, delay_polls=delay_polls)
    engine.attach_connector(connector)
    return engine, connector


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def owner(clock):
    """The prefill role: engine A."""
    engine, _ = pd_engine(InProcessFabric(), clock)
    yield engine
    engine.shutdown()


def receiver_of(owner: LLMEngine, clock: FakeClock, delay_polls: int = 0, **config):
    """The decode role: engine B, on the owner's fabric."""
    fabric = owner.remote.connector.fabric
    return pd_engine(fabric, clock, delay_polls, **config)


def prefill(owner: LLMEngine, prompts: list[list[int]]) -> list[tuple[int, object]]:
    """(first token, KV handle) per prompt, its blocks held on the owner under a lease."""
    ids = [owner.add_request(p, SamplingParams(temperature=0, max_tokens=1), hold_kv=True)
           for p in prompts]
    out = {}
    while len(out) < len(ids):
        for d in owner.step():
            if d.finished:
                assert d.kv_handle is not None, d
                out[d.request_id] = (d.new_token_ids[0], d.kv_handle)
    return [out[i] for i in ids]


def run(engine: LLMEngine, max_steps: int = 500):
    out, finish = {}, {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        for d in engine.step():
            out.setdefault(d.request_id, []).extend(d.new_token_ids)
            if d.finished:
                finish[d.request_id] = (d.finish_reason, d.error)
    assert not engine.has_unfinished()
    return out, finish


def all_free(engine: LLMEngine) -> bool:
    return engine.pool.num_free_blocks == engine.pool.num_blocks


def settle_owner(owner: LLMEngine) -> None:
    """One owner step collects the receivers' release notices and expired leases."""
    owner.step()


@pytest.mark.parametrize("async_scheduling,delay_polls", [(False, 0), (True, 2)])
def test_pulled_kv_gives_single_engine_tokens(owner, clock, async_scheduling, delay_polls):
    receiver, _ = receiver_of(owner, clock, delay_polls, async_scheduling=async_scheduling)
    try:
        prompts = random_prompts(5, 512, 5, 70, seed=31)
        shared = random_prompts(1, 512, 40, 40, seed=32)[0]
        prompts += [shared + p[:7] for p in random_prompts(3, 512, 7, 7, seed=33)]
        with LLM(**MODEL) as single:
            expected = [o.token_ids for o in single.generate(prompts, GREEDY)]
        prefilled = prefill(owner, prompts)
        assert owner.num_held_kv == len(prompts) and not all_free(owner)
        got = []
        # Two waves: the second one's shared prefix is then cached on the receiver already.
        for wave in (range(0, 6), range(6, len(prompts))):
            for i in wave:
                first, handle = prefilled[i]
                assert handle.num_tokens == len(prompts[i])
                assert receiver.add_prefilled_request(prompts[i], first, handle, GREEDY,
                                                      request_id=f"p{i}") is None
            out, finish = run(receiver)
            got += [[prefilled[i][0]] + out[f"p{i}"] for i in wave]
            assert all(reason == FinishReason.LENGTH for reason, _ in finish.values())
        assert got == expected
        transfer = receiver.stats().transfer
        assert transfer.pulls_ok == len(prompts) and transfer.pulls_failed == 0
        assert receiver.kv.num_prefix_hit_tokens > 0  # the second wave hit locally
        assert receiver.kv.num_prefix_query_tokens == sum(len(p) for p in prompts)
        assert all_free(receiver)
        settle_owner(owner)
        assert owner.num_held_kv == 0 and all_free(owner)
        assert owner.stats().transfer.leases_released == len(prompts)
        assert async_scheduling is False or receiver.overlap.num_steps > 0
    finally:
        receiver.shutdown()


def test_owner_abort_frees_held_blocks_and_a_later_pull_fails(owner, clock):
    receiver, _ = receiver_of(owner, clock)
    try:
        prompt = random_prompts(1, 512, 50, 50, seed=41)[0]
        ((first, handle),) = prefill(owner, [prompt])
        assert owner.abort_request(handle.request_id)
        assert owner.num_held_kv == 0 and all_free(owner)
        receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="late")
        _, finish = run(receiver)
        reason, error = finish["late"]
        assert reason == FinishReason.ERROR and "no longer holds the lease" in error
        assert receiver.stats().transfer.pulls_failed == 1
        assert all_free(receiver)
        settle_owner(owner)  # the receiver's release of a revoked lease changes nothing
        assert all_free(owner) and owner.stats().transfer.leases_released == 0
    finally:
        receiver.shutdown()


def test_receiver_abort_while_queued_releases_the_lease(owner, clock):
    receiver, _ = receiver_of(owner, clock)
    try:
        prompt = random_prompts(1, 512, 50, 50, seed=51)[0]
        ((first, handle),) = prefill(owner, [prompt])
        receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="queued")
        assert receiver.abort_request("queued")  # before any step: not pulling yet
        assert not receiver.has_unfinished() and all_free(receiver)
        settle_owner(owner)
        assert owner.num_held_kv == 0 and all_free(owner)
        assert owner.stats().transfer.leases_released == 1
    finally:
        receiver.shutdown()


def test_receiver_abort_while_pulling_frees_blocks_once_the_pull_ended(owner, clock):
    receiver, _ = receiver_of(owner, clock, delay_polls=2)
    try:
        prompt = random_prompts(1, 512, 50, 50, seed=61)[0]
        ((first, handle),) = prefill(owner, [prompt])
        receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="pulling")
        receiver.step()
        assert receiver.stats().transfer.num_pulling == 1
        assert receiver.abort_request("pulling")
        settle_owner(owner)  # the owner is told at once; it need not wait for the read
        assert owner.num_held_kv == 0 and all_free(owner)
        # The transfer may still write the receiver's blocks: they stay taken until it ends.
        assert not all_free(receiver)
        out, finish = run(receiver)
        assert out == {} and finish == {}  # an aborted request reports nothing more
        assert all_free(receiver)
        transfer = receiver.stats().transfer
        assert transfer.num_pulling == 0 and transfer.pulls_failed == 0
    finally:
        receiver.shutdown()


@pytest.mark.parametrize("at_start", [False, True])
def test_failed_pull_ends_the_request_with_an_error(owner, clock, at_start):
    receiver, connector = receiver_of(owner, clock)
    try:
        prompt = random_prompts(1, 512, 50, 50, seed=71)[0]
        ((first, handle),) = prefill(owner, [prompt])
        connector.fail_pull("broken", "injected read failure", at_start=at_start)
        receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="broken")
        out, finish = run(receiver)
        reason, error = finish["broken"]
        assert reason == FinishReason.ERROR and "injected read failure" in error
        assert out["broken"] == []
        assert all_free(receiver)
        settle_owner(owner)  # a failed pull still releases the owner's lease
        assert owner.num_held_kv == 0 and all_free(owner)
    finally:
        receiver.shutdown()


def test_lease_expiry_frees_owner_blocks_and_a_late_pull_fails(owner, clock):
    receiver, _ = receiver_of(owner, clock)
    try:
        prompts = random_prompts(2, 512, 30, 30, seed=81)
        prefilled = prefill(owner, prompts)
        clock.advance(LEASE_S)  # at the deadline, within the grace period: still held
        settle_owner(owner)
        assert owner.num_held_kv == 2
        clock.advance(GRACE_S + 0.1)
        settle_owner(owner)
        assert owner.num_held_kv == 0 and all_free(owner)
        assert owner.stats().transfer.leases_expired == 2
        first, handle = prefilled[0]
        receiver.add_prefilled_request(prompts[0], first, handle, GREEDY, request_id="late")
        _, finish = run(receiver)
        reason, error = finish["late"]
        assert reason == FinishReason.ERROR and "expired" in error
        assert all_free(receiver)
    finally:
        receiver.shutdown()
