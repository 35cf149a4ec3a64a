"""The router's KV-event consumer against a real Redis, with streams written as workers do."""

import asyncio
import json
import uuid

from common.redis_schema import CLEARED, REMOVED, STORED, Keys, KVEventEntry, WorkerRecord
from router.kv_event_consumer import KVEventConsumer
from router.prefix_index import PrefixIndex
from router.registry import RegistryView


def setup(redis_server):
    import redis.asyncio as aioredis

    keys = Keys(f"t{uuid.uuid4().hex[:6]}:")
    client = aioredis.from_url(redis_server.admin_url())
    registry = RegistryView(client, keys)
    registry.workers = {"w": WorkerRecord("w", "prefill", "h:1", "m", "d", 1, 16, 100,
                                          started_at=1.0)}
    index = PrefixIndex()
    return keys, client, registry, index, KVEventConsumer(client, keys, index, registry,
                                                           block_ms=10)


async def xadd(client, keys, *entries):
    for e in entries:
        await client.xadd(keys.kv_events("w"), e.to_fields())


async def drain(consumer, rounds=5):
    for _ in range(rounds):
        await consumer.poll_once()


def test_events_build_the_index_and_gaps_resync(redis_server):
    async def main():
        keys, client, registry, index, consumer = setup(redis_server)
        await xadd(client, keys, KVEventEntry(1, CLEARED), KVEventEntry(2, STORED, (10, 11, 12)),
                   KVEventEntry(3, REMOVED, (12,)))
        await drain(consumer)
        assert index.overlap([10, 11, 12], ["w"]) == {"w": 2}
        # Events 4-5 are lost (say, trimmed); the worker's snapshot as of seq 5 has 10, 11, 20.
        await client.set(keys.kv_snapshot("w"), json.dumps(
            {"seq": 5, "hashes": [format(h, "x") for h in (10, 11, 20)]}))
        await xadd(client, keys, KVEventEntry(6, STORED, (21,)))
        await drain(consumer)
        assert consumer.num_resyncs >= 2
        assert index.overlap([20, 21], ["w"]) == {"w": 2}
        assert index.overlap([10, 11, 12], ["w"]) == {"w": 2}
        # A restarted worker starts over at seq 1 with a cleared event.
        await xadd(client, keys, KVEventEntry(1, CLEARED), KVEventEntry(2, STORED, (30,)))
        await drain(consumer)
        assert index.num_blocks("w") == 1 and index.overlap([30], ["w"]) == {"w": 1}
        consumer.forget("w")
        assert index.num_blocks() == 0
        await client.aclose()

    asyncio.run(main())
