"""Cache-aware routing end to end: a prompt some worker already holds is served from that
cache, never recomputed where it is missing. Real router, prefill and decode workers, Redis."""

import asyncio
import time

import httpx
import pytest

from proto import pb, pb_grpc
from tests.cluster_helpers import RouterProcess, WorkerProcess, worker_channel

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

PROMPT = ("A lighthouse keeper on a remote island kept a careful log of every ship, storm and "
          "seabird he saw. Over forty years the log grew to fill a whole shelf of his small "
          "stone cottage, and scholars from the mainland came to read it. One winter evening "
          "he opened the oldest volume, blew the dust from its cracked leather cover, lit a "
          "candle against the wind that rattled the shutters, and read the first entry aloud:")
THRESHOLD = 32  # the router's default, stated so the prompt is surely longer


async def _stats(addr: str) -> pb.StatsResponse:
    async with worker_channel(addr) as ch:
        return await pb_grpc.WorkerStub(ch).Stats(pb.StatsRequest())


def wait_until_indexed(router_url: str, worker_id: str, blocks: int, timeout_s: float = 10):
    """Until the router's prefix index lists ``blocks`` blocks for the worker (KV events are
    asynchronous); returns the count seen last."""
    deadline = time.time() + timeout_s
    while True:
        workers = httpx.get(f"{router_url}/v1/cluster").json()["workers"]
        seen = next(w["indexed_blocks"] for w in workers if w["worker_id"] == worker_id)
        if seen >= blocks or time.time() > deadline:
            return seen
        time.sleep(0.05)


def test_exact_repeats_are_served_from_cache(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    # Two decode workers: the router spreads the repeats over both, so one of them meets the
    # prompt while only the prefill worker holds it.
    decodes = [WorkerProcess("decode", model, redis_server.url) for _ in range(2)]
    router = RouterProcess(redis_server.url,
                           model + ["--local-prefill-threshold", str(THRESHOLD)],
                           wait_for=(1, 2))
    try:
        client = httpx.Client(base_url=router.url, timeout=120)
        cached = []
        for i in range(48):
            r = client.post("/v1/completions", json={
                "model": demo_model_dir.name, "prompt": PROMPT, "max_tokens": 2,
                "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            assert usage["prompt_tokens"] > 2 * THRESHOLD
            cached.append(usage["prompt_tokens_details"]["cached_tokens"])
            if i == 0:  # let the router learn what the prefill worker now holds
                full_blocks = (usage["prompt_tokens"] - 1) // 16
                assert wait_until_indexed(router.url, prefill.worker_id,
                                          full_blocks) >= full_blocks
        assert cached[0] == 0
        misses = [i for i, c in enumerate(cached[1:], start=1) if c == 0]
        assert misses == [], cached
        for d in decodes:  # both decode workers served some of them
            assert asyncio.run(_stats(d.address)).prefix_query_tokens > 0
    finally:
        router.stop()
        prefill.stop()
        for d in decodes:
            d.stop()
