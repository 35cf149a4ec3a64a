"""The background loops that poll Redis end when their task is cancelled, at whatever point
the cancel lands: the router's registry and KV-event consumer and a worker's heartbeat and
KV-event publisher, against the session's real Redis (redis-server, or fakeredis's TCP server
on a bare machine). On Python 3.11 redis-py sometimes swallows a cancellation inside a command
(common/cancellation.py); before the loops checked for it, one of these runs kept going after
its cancel within the first few tries, and a router hung in shutdown."""

import asyncio
import random
import threading
import uuid
from collections import deque

from common.cancellation import raise_if_cancelled
from common.redis_acl import ROUTER, WORKER
from common.redis_schema import Keys, WorkerRecord
from router.kv_event_consumer import KVEventConsumer
from router.prefix_index import PrefixIndex
from router.registry import RegistryView
from tests.cluster_helpers import cluster_secret
from worker.presence import WorkerPresence

CANCELS = 60
RECORD = WorkerRecord(worker_id="w-stop", role="decode", address="127.0.0.1:1", model="m",
                      compat_digest="c", tp_size=1, block_size=16, num_blocks=10,
                      max_model_len=64)


def test_a_swallowed_cancellation_still_ends_the_task():
    async def main():
        async def swallows_then_checks():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass  # as a library that eats it would
            raise_if_cancelled()
            return "went on"

        task = asyncio.create_task(swallows_then_checks())
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done and task.cancelled()

    asyncio.run(main())


async def _cancel_at_random_points(start_loop, rounds: int = CANCELS) -> list[int]:
    """Start ``start_loop()`` and cancel it after a random few ms, ``rounds`` times; the
    rounds whose task was still running a second after its cancel."""
    rng = random.Random(0)
    stuck = []
    for i in range(rounds):
        task = asyncio.create_task(start_loop())
        await asyncio.sleep(rng.random() * 0.005)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if not done:
            stuck.append(i)
            break  # a task that ignores cancels would keep the loop busy for the rest
    return stuck


def _run_bounded(main, timeout_s: float = 120.0) -> None:
    """``asyncio.run(main())`` in a thread of its own: a task that ignores its cancels would
    also hang ``asyncio.run``'s own shutdown, so a failure must not wait on it."""
    errors: list[BaseException] = []

    def run():
        try:
            asyncio.run(main())
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "a cancelled loop kept its event loop from shutting down"
    if errors:
        raise errors[0]


def _url(redis_server, role: str) -> str:
    from common.redis_acl import url_for_role

    return url_for_role(redis_server.url, cluster_secret(), role)


def test_router_loops_end_when_cancelled(redis_server):
    import redis.asyncio as aioredis

    async def main():
        keys = Keys(f"stop-{uuid.uuid4().hex[:8]}:")
        client = aioredis.from_url(_url(redis_server, ROUTER), socket_timeout=2.0)
        registry = RegistryView(client, keys, poll_s=0.0)
        consumer = KVEventConsumer(client, keys, PrefixIndex(), registry, block_ms=1)
        try:
            assert await _cancel_at_random_points(registry.run) == []
            # A worker in view, so that every pass reads its KV-event stream from Redis.
            registry.workers = {"w-stop": RECORD}
            assert await _cancel_at_random_points(consumer.run) == []
        finally:
            await client.aclose()

    _run_bounded(main)


def test_worker_presence_loops_end_when_cancelled(redis_server):
    async def main():
        keys = Keys(f"stop-{uuid.uuid4().hex[:8]}:")
        # No pause between heartbeats, a snapshot every pass: each pass is Redis calls.
        presence = WorkerPresence(_url(redis_server, WORKER), keys, lambda: RECORD, deque(),
                                  heartbeat_s=0.0, ttl_s=5.0, snapshot_every_s=0.0)
        await presence.start()  # connects; its loops are replaced by ours below
        for task in presence._tasks:
            task.cancel()
        await asyncio.gather(*presence._tasks, return_exceptions=True)
        try:
            assert await _cancel_at_random_points(presence._heartbeat_loop) == []
            assert await _cancel_at_random_points(presence._publish_loop) == []
        finally:
            await presence.stop(deregister=True)

    _run_bounded(main)
