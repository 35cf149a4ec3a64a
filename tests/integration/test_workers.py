"""The disaggregated pipeline as real services: prefill worker -> NIXL -> decode worker,
real gRPC, real Redis, real processes."""

import asyncio
import time
import urllib.request

import grpc
import pytest

from common.redis_schema import Keys, KVEventEntry, WorkerRecord
from engine import LLM, SamplingParams
from kv_transfer.block_hash import BlockHasher
from proto import API_VERSION, pb, pb_grpc
from tests.cluster_helpers import WorkerProcess, worker_channel
from tests.decode_client import DecodeClient
from tests.helpers import random_prompts

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

MODEL_ARGS = ["--model", "random:tiny-llama", "--device", "cpu", "--seed", "3",
              "--kv-cache-gib", "0.02"]
ENGINE_KWARGS = dict(model="random:tiny-llama", device="cpu", seed=3,
                     kv_cache_memory_bytes=int(0.02 * 2**30))


def sampling(max_tokens=16) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                             ignore_eos=True, skip_special_tokens=True)


@pytest.fixture(scope="module")
def workers(redis_server):
    prefill = WorkerProcess("prefill", MODEL_ARGS, redis_server.url, ["--kv-lease-s", "20"])
    # The decode worker runs the overlapped loop, as it does by default on GPUs.
    decode = WorkerProcess("decode", MODEL_ARGS, redis_server.url, ["--async-scheduling", "on"])
    yield prefill, decode
    for w in (prefill, decode):
        assert w.stop() == 0, "".join(w.log_lines[-20:])


async def disaggregated(prefill_addr, decode_addr, rid, prompt, max_tokens=16, cancel_after=None,
                        client: DecodeClient | None = None):
    """Prefill on one worker, decode on the other; ``client``: a shared decode client (one
    Outputs stream for many requests, as one router has), else one of its own."""
    async with worker_channel(prefill_addr) as pch:
        first = await pb_grpc.WorkerStub(pch).Prefill(pb.PrefillRequest(
            api_version=API_VERSION, request_id=rid, prompt_token_ids=prompt,
            sampling=sampling(max_tokens)))
    request = pb.DecodeRequest(api_version=API_VERSION, request_id=rid, prompt_token_ids=prompt,
                               sampling=sampling(max_tokens),
                               pull_kv=pb.PulledKV(first_token=first.first_token,
                                                   kv_handle=first.kv_handle))
    if client is None:
        async with DecodeClient(decode_addr) as own:
            outputs = await own.run(request, cancel_after)
    else:
        outputs = await client.run(request, cancel_after)
    tokens = [first.first_token] + [t for o in outputs for t in o.token_ids]
    if cancel_after is not None and not outputs[-1].finish_reason:
        return tokens, ("cancelled", "")
    return tokens, (outputs[-1].finish_reason, outputs[-1].error)


async def stats(addr) -> pb.StatsResponse:
    async with worker_channel(addr) as ch:
        return await pb_grpc.WorkerStub(ch).Stats(pb.StatsRequest())


def shared_prefix_prompts(num: int, seed: int) -> list[list[int]]:
    systems = random_prompts(3, 512, 32, 48, seed=seed)
    tails = random_prompts(num, 512, 1, 40, seed=seed + 1)
    return [systems[i % 3] + tail for i, tail in enumerate(tails)]


def test_24_prompts_match_single_engine(workers):
    prefill, decode = workers
    prompts = shared_prefix_prompts(24, seed=100)
    with LLM(**ENGINE_KWARGS) as single:
        expected = [o.token_ids for o in single.generate(
            prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]

    async def main():
        return await asyncio.gather(*(disaggregated(prefill.address, decode.address, f"m{i}", p)
                                      for i, p in enumerate(prompts)))

    results = asyncio.run(main())
    assert [tokens for tokens, _ in results] == expected
    assert all(finish == ("length", "") for _, finish in results)


def test_32_concurrent_requests_leave_nothing_behind(workers):
    prefill, decode = workers
    prompts = shared_prefix_prompts(32, seed=200)

    async def main():
        results = await asyncio.gather(*(disaggregated(prefill.address, decode.address,
                                                       f"c{i}", p, max_tokens=24)
                                        for i, p in enumerate(prompts)))
        await asyncio.sleep(0.3)  # release notifications are one-way messages
        return results, await stats(prefill.address), await stats(decode.address)

    results, pstats, dstats = asyncio.run(main())
    assert all(len(tokens) == 24 for tokens, _ in results)
    for s in (pstats, dstats):
        assert s.num_blocks_in_use == 0, s  # every block free or only cached
        assert s.num_held_leases == 0 and s.num_running == 0 and s.num_waiting == 0
    assert pstats.prefix_hit_tokens > 0  # shared system prompts were reused
    assert dstats.pulls_ok >= 32 and dstats.pulls_failed == 0


def test_abort_mid_stream_frees_blocks_on_both_sides(workers):
    prefill, decode = workers
    prompt = random_prompts(1, 512, 60, 60, seed=300)[0]

    async def main():
        tokens, finish = await disaggregated(prefill.address, decode.address, "abort-me",
                                             prompt, max_tokens=400, cancel_after=5)
        assert finish[0] == "cancelled"
        started = time.time()
        while time.time() - started < 1.0:
            d, p = await stats(decode.address), await stats(prefill.address)
            if d.num_blocks_in_use == 0 and p.num_held_leases == 0:
                return time.time() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"blocks still in use after 1s: decode {d}, prefill {p}")

    asyncio.run(main())


def test_concurrent_streams_share_output_batches(workers):
    """Sixteen requests of one client (one router's Outputs stream) decoding together: the
    worker sends one batch per engine step carrying all of them, not a message per token."""
    prefill, decode = workers
    prompts = shared_prefix_prompts(16, seed=250)

    async def main():
        before = await stats(decode.address)
        async with DecodeClient(decode.address) as client:
            results = await asyncio.gather(*(
                disaggregated(prefill.address, decode.address, f"b{i}", p, max_tokens=32,
                              client=client) for i, p in enumerate(prompts)))
            during = await stats(decode.address)
        await asyncio.sleep(0.3)
        return results, before, during, await stats(decode.address)

    results, before, during, after = asyncio.run(main())
    assert all(len(tokens) == 32 and finish == ("length", "") for tokens, finish in results)
    assert during.num_output_streams >= 1 and after.num_output_streams == 0
    tokens = after.output_tokens - before.output_tokens
    batches = after.output_batches - before.output_batches
    assert tokens == 16 * 31  # every decoded token went out once (the first came from prefill)
    assert batches * 4 <= tokens, (batches, tokens)  # ≥ 4 requests' tokens per message
    assert after.num_blocks_in_use == 0 and after.num_running == 0


def test_registry_and_kv_events_in_redis(workers, redis_server):
    prefill, decode = workers
    keys = Keys()
    r = redis_server.client()
    ids = {m.decode() for m in r.smembers(keys.workers)}
    assert {prefill.worker_id, decode.worker_id} <= ids
    records = {w: WorkerRecord.from_json(r.get(keys.worker(w))) for w in
               (prefill.worker_id, decode.worker_id)}
    assert records[prefill.worker_id].role == "prefill"
    assert records[decode.worker_id].address == decode.address
    assert records[prefill.worker_id].compat_digest == records[decode.worker_id].compat_digest
    prompt = random_prompts(1, 512, 64, 64, seed=400)[0]
    asyncio.run(disaggregated(prefill.address, decode.address, "events", prompt))
    expected = set(BlockHasher(16, "pdserve-v1").hash_prompt(prompt)[:3])  # 63 tokens computed
    deadline = time.time() + 3
    stored = set()
    while time.time() < deadline and not expected <= stored:
        entries = r.xrange(keys.kv_events(prefill.worker_id))
        stored = {h for _, f in entries for h in KVEventEntry.from_fields(f).hashes
                  if KVEventEntry.from_fields(f).kind == "stored"}
        time.sleep(0.1)
    assert expected <= stored
    seqs = [KVEventEntry.from_fields(f).seq for _, f in r.xrange(keys.kv_events(
        prefill.worker_id))]
    assert seqs == list(range(1, len(seqs) + 1))  # numbered without gaps


def test_unpulled_handle_is_freed_at_lease_expiry(redis_server):
    prefill = WorkerProcess("prefill", MODEL_ARGS, redis_server.url, ["--kv-lease-s", "0.5"])
    try:
        async def main():
            async with worker_channel(prefill.address) as ch:
                first = await pb_grpc.WorkerStub(ch).Prefill(pb.PrefillRequest(
                    api_version=API_VERSION, request_id="orphan",
                    prompt_token_ids=list(range(5, 60)), sampling=sampling()))
            assert first.kv_handle.block_ids
            deadline = time.time() + 5
            while time.time() < deadline:
                s = await stats(prefill.address)
                if s.leases_expired == 1:
                    return s
                await asyncio.sleep(0.1)
            raise AssertionError("lease never expired")

        s = asyncio.run(main())
        assert s.num_held_leases == 0 and s.num_blocks_in_use == 0
        # The metrics endpoint serves a stats snapshot refreshed every 0.25 s.
        deadline, line = time.time() + 3, ""
        while time.time() < deadline and not line.endswith(" 1.0"):
            metrics = urllib.request.urlopen(
                f"http://127.0.0.1:{prefill.metrics_port}/metrics").read().decode()
            line = next(x for x in metrics.splitlines()
                        if x.startswith("pdserve_worker_kv_leases_expired_total"))
            time.sleep(0.1)
        assert line.endswith(" 1.0"), line
    finally:
        prefill.stop()


def test_killed_prefill_worker_gives_clear_errors(redis_server, workers):
    _, decode = workers
    prefill = WorkerProcess("prefill", MODEL_ARGS, redis_server.url)
    prompt = list(range(5, 70))

    async def main():
        async with worker_channel(prefill.address) as ch:
            first = await pb_grpc.WorkerStub(ch).Prefill(pb.PrefillRequest(
                api_version=API_VERSION, request_id="k1", prompt_token_ids=prompt,
                sampling=sampling()))
        prefill.kill()  # dies holding the blocks, before the decode side pulls them
        started = time.time()
        async with DecodeClient(decode.address) as client:
            chunks = await client.run(pb.DecodeRequest(
                api_version=API_VERSION, request_id="k1", prompt_token_ids=prompt,
                sampling=sampling(), pull_kv=pb.PulledKV(first_token=first.first_token,
                                                         kv_handle=first.kv_handle)))
        assert chunks[-1].finish_reason == "error"
        assert "unreachable" in chunks[-1].error or "failed" in chunks[-1].error
        assert time.time() - started < 15
        # A call to the dead worker fails fast with UNAVAILABLE instead of hanging.
        async with worker_channel(prefill.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.WorkerStub(ch).Prefill(pb.PrefillRequest(
                    api_version=API_VERSION, request_id="k2", prompt_token_ids=prompt,
                    sampling=sampling()), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        d = await stats(decode.address)
        assert d.num_blocks_in_use == 0

    asyncio.run(main())


def test_bad_requests_get_clear_status(workers):
    prefill, decode = workers

    async def main():
        async with worker_channel(prefill.address) as ch:
            stub = pb_grpc.WorkerStub(ch)
            cases = [
                (pb.PrefillRequest(api_version=99, request_id="v", prompt_token_ids=[5],
                                   sampling=sampling()), grpc.StatusCode.FAILED_PRECONDITION),
                (pb.PrefillRequest(api_version=API_VERSION, request_id="e", prompt_token_ids=[],
                                   sampling=sampling()), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.PrefillRequest(api_version=API_VERSION, request_id="t",
                                   prompt_token_ids=[10**6], sampling=sampling()),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.PrefillRequest(api_version=API_VERSION, request_id="s",
                                   prompt_token_ids=[5], sampling=pb.SamplingParams(
                                       max_tokens=0, top_p=1.0)),
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]
            for request, code in cases:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Prefill(request, timeout=10)
                assert err.value.code() == code, err.value.details()
            health = await stub.Health(pb.HealthRequest())
            assert health.ok and health.role == "prefill"

    asyncio.run(main())


def test_decode_tp2_fed_by_prefill_tp1(redis_server):
    args = ["--model", "random:tiny-llama-tp", "--device", "cpu", "--seed", "5",
            "--kv-cache-gib", "0.02"]
    prompts = shared_prefix_prompts(8, seed=500)
    with LLM(model="random:tiny-llama-tp", device="cpu", seed=5,
             kv_cache_memory_bytes=int(0.02 * 2**30)) as single:
        expected = [o.token_ids for o in single.generate(
            prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]
    prefill = WorkerProcess("prefill", args, redis_server.url)
    decode = WorkerProcess("decode", args + ["--tp", "2"], redis_server.url)
    try:
        async def main():
            return await asyncio.gather(*(disaggregated(prefill.address, decode.address,
                                                        f"tp{i}", p)
                                          for i, p in enumerate(prompts)))

        assert [tokens for tokens, _ in asyncio.run(main())] == expected
        d = asyncio.run(stats(decode.address))
        assert d.pulls_ok == len(prompts) and d.num_blocks_in_use == 0
    finally:
        assert decode.stop() == 0
        assert prefill.stop() == 0


def test_client_cancel_reaches_prefill_before_handoff(redis_server, demo_model_dir):
    # The real demo model with small prefill chunks: a 1500-token prompt takes many steps.
    prefill = WorkerProcess("prefill", ["--model", str(demo_model_dir),
                                        "--max-num-batched-tokens", "64"], redis_server.url)
    try:
        async def main():
            async with worker_channel(prefill.address) as ch:
                stub = pb_grpc.WorkerStub(ch)
                call = stub.Prefill(pb.PrefillRequest(
                    api_version=API_VERSION, request_id="cancel-me",
                    prompt_token_ids=random_prompts(1, 49152, 1500, 1500, seed=9)[0],
                    sampling=sampling()))
                await asyncio.sleep(0.5)
                busy = await stub.Stats(pb.StatsRequest())
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                deadline = time.time() + 2
                while time.time() < deadline:
                    s = await stub.Stats(pb.StatsRequest())
                    if s.num_running == 0 and s.num_blocks_in_use == 0:
                        return busy, s
                    await asyncio.sleep(0.05)
                raise AssertionError(f"request still running after cancel: {s}")

        busy, idle = asyncio.run(main())
        assert busy.num_running == 1  # it was mid-prefill when the client went away
        assert idle.num_held_leases == 0
    finally:
        prefill.stop()
