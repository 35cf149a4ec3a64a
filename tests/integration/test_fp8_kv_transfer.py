"""FP8 KV through the disaggregated path, over real NIXL: a TP1 FP8 prefill engine feeding a
TP2 FP8 decode engine gives one FP8 engine's tokens exactly (fp32 compute), moving a quarter
of the fp32 cache's bytes; a full-precision decode engine refuses an FP8 owner's blocks."""

import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from kv_transfer.handle import IncompatibleKVError
from tests.engine_peer import EnginePeer
from tests.helpers import random_prompts
from tests.integration.test_engine_kv_transfer import blocks_all_free, run

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

FP8 = dict(model="random:tiny-llama-tp", device="cpu", dtype="float32", seed=5,
           kv_cache_memory_bytes=16 << 20, kv_cache_dtype="fp8")
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def owner():
    peer = EnginePeer(kv_lease_s=20.0, **FP8)
    yield peer
    peer.stop()


def test_tp2_fp8_receiver_fed_by_tp1_fp8_owner_gives_single_fp8_engine_tokens(owner):
    prompts = random_prompts(5, 512, 10, 60, seed=91)
    scored = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0)
    with LLM(**FP8) as single:
        outs = single.generate(prompts, scored)
    expected = [o.token_ids for o in outs]
    with LLM(**dict(FP8, kv_cache_dtype="auto")) as full:
        full_lp = [lp.logprob for o in full.generate(prompts, scored) for lp in o.logprobs]
    assert full_lp != [lp.logprob for o in outs for lp in o.logprobs]  # FP8 really ran
    receiver = LLMEngine(EngineConfig(kv_transfer="nixl", tensor_parallel_size=2, **FP8))
    try:
        prefilled = owner.call("prefill", prompts)
        assert prefilled[0][1].compat.kv_dtype == "float8_e4m3fn"
        assert receiver.runner.kv_buffer.element_size() == 1
        ids = []
        for i, (prompt, (first, handle, _)) in enumerate(zip(prompts, prefilled, strict=True)):
            receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id=f"f{i}")
            ids.append(f"f{i}")
        out, _ = run(receiver, ids)
        assert [[p[0]] + out[i] for p, i in zip(prefilled, ids, strict=True)] == expected
        assert receiver.stats().transfer.pulls_ok == len(prompts)
        assert blocks_all_free(receiver)
    finally:
        receiver.shutdown()


def test_full_precision_receiver_refuses_fp8_owner_naming_both(owner):
    prompt = random_prompts(1, 512, 30, 30, seed=92)[0]
    (first, handle, _), = owner.call("prefill", [prompt])
    receiver = LLMEngine(EngineConfig(kv_transfer="nixl", **dict(FP8, kv_cache_dtype="auto")))
    try:
        with pytest.raises(IncompatibleKVError) as err:
            receiver.add_prefilled_request(prompt, first, handle, GREEDY, request_id="mixed")
        message = str(err.value)
        assert "float8_e4m3fn" in message and "float32" in message
        assert "--kv-cache-dtype" in message
        assert blocks_all_free(receiver)
    finally:
        receiver.shutdown()
    held, _, _, _ = owner.call("wait_free", 25.0)  # the lease runs out: nothing leaks
    assert held == 0
