"""A prefill worker's held KV (its lease) must end as soon as nobody will pull it: when the
client goes away around the handoff, or the decode side fails before pulling. Real processes:
router, prefill and decode workers over gRPC, NIXL on CPU, real Redis.

Leases are set to 60 s, so expiry cannot explain a release: the tests poll the prefill worker's
``num_held_leases`` until a short deadline and assert it reached 0 and nothing expired.
"""

import asyncio
import json
import re
import time

import grpc
import httpx
import pytest

from proto import API_VERSION, pb, pb_grpc
from tests.cluster_helpers import RouterProcess, WorkerProcess, worker_channel
from tests.decode_client import DecodeClient
from tests.helpers import random_prompts

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

LEASE_ARGS = ["--kv-lease-s", "60"]
STORY = ("Once upon a time, in a harbour town famous for its bakeries, a young apprentice "
         "named Mira discovered a map hidden inside a loaf of bread. The map showed")


async def _stats(addr: str) -> pb.StatsResponse:
    async with worker_channel(addr) as ch:
        return await pb_grpc.WorkerStub(ch).Stats(pb.StatsRequest())


def held_leases_after(addr: str, deadline_s: float) -> pb.StatsResponse:
    """Poll the prefill worker until no lease is held or the deadline passes; the last stats."""
    async def poll():
        deadline = time.time() + deadline_s
        while True:
            s = await _stats(addr)
            if s.num_held_leases == 0 or time.time() > deadline:
                return s
            await asyncio.sleep(0.05)
    return asyncio.run(poll())


async def _cut_after_first_token(url: str, model: str, i: int) -> bool:
    """Stream a completion and hang up as soon as the first token arrives."""
    body = {"model": model, "prompt": f"{i}: {STORY}", "max_tokens": 200, "temperature": 0,
            "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        return True  # leaving the block closes the connection
    return False


def test_abort_storm_releases_every_lease(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model + LEASE_ARGS, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "8"],
                           wait_for=(1, 1))
    try:
        async def storm():
            return await asyncio.gather(*(_cut_after_first_token(router.url,
                                                                 demo_model_dir.name, i)
                                          for i in range(50)))

        assert all(asyncio.run(storm()))
        s = held_leases_after(prefill.address, 2.0)
        d = asyncio.run(_stats(decode.address))
        assert s.num_held_leases == 0, (s, d)
        assert s.leases_expired == 0
        assert s.num_blocks_in_use == 0, s
    finally:
        router.stop()
        prefill.stop()
        decode.stop()


def test_decode_failure_before_the_pull_releases_the_lease(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model + LEASE_ARGS, redis_server.url)
    decodes = [WorkerProcess("decode", model, redis_server.url) for _ in range(2)]
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "8"],
                           wait_for=(1, 2))
    try:
        # Killed, it stays in the registry until its record's TTL runs out: the router still
        # hands prefilled requests to it, its Outputs stream cannot open, and the request moves on.
        decodes[0].kill()
        client = httpx.Client(base_url=router.url, timeout=120)
        for i in range(4):
            r = client.post("/v1/completions", json={
                "model": demo_model_dir.name, "prompt": f"{i}: {STORY}", "max_tokens": 8,
                "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
        metrics = client.get("/metrics").text
        found = re.search(r"^pdserve_router_decode_migrations_total (\S+)$", metrics, re.M)
        # The path ran: at least once (twice when the dead worker's fence ran out while its
        # record still lingered, which a slow machine can stretch to), and nothing leaked.
        assert found and float(found.group(1)) >= 1, found and found.group(0)
        s = held_leases_after(prefill.address, 2.0)
        assert s.num_held_leases == 0, s
        assert s.leases_expired == 0
    finally:
        router.stop()
        prefill.stop()
        decodes[1].stop()


def test_decode_worker_refusing_a_handle_releases_it(redis_server):
    """The decode worker's own side: a handle it refuses (here the handle does not match the
    prompt) is released to its owner, without waiting for the router."""
    args = ["--model", "random:tiny-llama", "--device", "cpu", "--seed", "3",
            "--kv-cache-gib", "0.02"]
    prefill = WorkerProcess("prefill", args + LEASE_ARGS, redis_server.url)
    decode = WorkerProcess("decode", args, redis_server.url)
    prompt = random_prompts(1, 512, 60, 60, seed=7)[0]
    sampling = pb.SamplingParams(max_tokens=16, temperature=0.0, top_p=1.0, ignore_eos=True)
    try:
        async def main():
            async with worker_channel(prefill.address) as pch:
                first = await pb_grpc.WorkerStub(pch).Prefill(pb.PrefillRequest(
                    api_version=API_VERSION, request_id="refused", prompt_token_ids=prompt,
                    sampling=sampling))
                assert first.kv_handle.block_ids
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async with DecodeClient(decode.address) as client:
                        await client.run(pb.DecodeRequest(
                            api_version=API_VERSION, request_id="refused",
                            prompt_token_ids=prompt[:-1], sampling=sampling,
                            pull_kv=pb.PulledKV(first_token=first.first_token,
                                                kv_handle=first.kv_handle)))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        asyncio.run(main())
        s = held_leases_after(prefill.address, 2.0)
        assert s.num_held_leases == 0 and s.leases_released == 1, s
    finally:
        prefill.stop()
        decode.stop()


def test_router_dying_mid_stream_ends_its_requests_on_the_worker(redis_server, demo_model_dir):
    """A router process killed with streams open: the decode worker sees its Outputs stream
    end and aborts that router's requests (nothing keeps decoding, no block stays in use)."""
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model + LEASE_ARGS, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "0"],
                           wait_for=(1, 1))
    try:
        streams = []
        for i in range(3):
            client = httpx.Client(base_url=router.url, timeout=60)
            cm = client.stream("POST", "/v1/completions", json={
                "model": demo_model_dir.name, "prompt": f"{i}: {STORY}", "max_tokens": 1500,
                "temperature": 0, "ignore_eos": True, "stream": True})
            lines = cm.__enter__().iter_lines()
            while not next(lines).startswith("data: {"):  # a token reached the client
                pass
            streams.append((client, cm, lines))  # kept: collected, they would hang up

        async def all_decoding():  # the last one's Submit follows its first token
            deadline = time.time() + 10
            while True:
                s = await _stats(decode.address)
                if s.num_running == 3 or time.time() > deadline:
                    return s
                await asyncio.sleep(0.05)

        busy = asyncio.run(all_decoding())
        assert busy.num_running == 3 and busy.num_output_streams == 1, busy
        router.process.kill()  # no goodbye: the kernel closes its connections
        router.process.wait(timeout=10)

        async def settled():
            deadline = time.time() + 5
            while True:
                s = await _stats(decode.address)
                if (s.num_running == 0 and s.num_blocks_in_use == 0
                        and s.num_output_streams == 0) or time.time() > deadline:
                    return s
                await asyncio.sleep(0.1)

        s = asyncio.run(settled())
        assert s.num_running == 0 and s.num_waiting == 0, s
        assert s.num_blocks_in_use == 0 and s.num_output_streams == 0, s
        assert held_leases_after(prefill.address, 2.0).num_held_leases == 0
        for client, _, _ in streams:
            client.close()
    finally:
        router.stop()
        prefill.stop()
        decode.stop()
