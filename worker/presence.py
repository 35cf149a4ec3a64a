"""A worker's presence in Redis: registry heartbeat, KV-event stream, cache snapshots.

Runs as asyncio tasks beside the gRPC server. Redis being away never stops the worker: it
logs once, keeps its events numbered in memory (bounded), and catches up — or, if it had to
drop events, publishes a fresh snapshot so consumers can resynchronise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from common import defaults
from common.cancellation import raise_if_cancelled
from common.redis_acl import redacted
from common.redis_schema import CLEARED, REMOVED, STORED, Keys, KVEventEntry, WorkerRecord
from engine.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

log = logging.getLogger(__name__)

_MAX_BACKLOG = 100_000  # events kept while Redis is away; beyond, consumers resync
_STREAM_MAXLEN = 200_000


class WorkerPresence:
    def __init__(self, redis_url: str, keys: Keys, record: Callable[[], WorkerRecord],
                 events: deque[KVEvent], heartbeat_s: float = defaults.HEARTBEAT_S,
                 ttl_s: float = defaults.WORKER_RECORD_TTL_S,
                 snapshot_every_s: float = 10.0):
        self.redis_url = redis_url
        self.keys = keys
        self.record = record
        self.events = events  # filled by the engine thread
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.snapshot_every_s = snapshot_every_s
        self._redis = None
        self._seq = 0
        self._backlog: deque[KVEventEntry] = deque()
        self._cached: set[int] = set()  # mirror of the engine's cached block hashes
        self._snapshot_due = True
        self._connected: bool | None = None
        self._tasks: list[asyncio.Task] = []
        self.worker_id = record().worker_id

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.redis_url, socket_timeout=2.0,
                                        socket_connect_timeout=2.0)
        # A fresh engine has an empty cache: tell consumers to forget what they knew.
        self._emit(KVEventEntry(self._next_seq(), CLEARED))
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                       asyncio.create_task(self._publish_loop(), name="kv-events")]

    async def stop(self, deregister: bool = True, timeout_s: float = 5.0) -> None:
        """Stop heartbeating (and deregister). Bounded: a worker that stops while Redis is
        unreachable must still exit; its record then ends with its TTL."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is None:
            return
        if deregister:
            try:
                await asyncio.wait_for(self._deregister(), timeout_s)
            except (Exception, asyncio.TimeoutError) as e:
                log.warning("could not deregister from Redis: %s", e or "timed out")
        try:
            await asyncio.wait_for(self._redis.aclose(), timeout_s)
        except (Exception, asyncio.TimeoutError):
            pass  # the connection is dropped with the process anyway

    async def _deregister(self) -> None:
        await self._drain_events()
        pipe = self._redis.pipeline()
        pipe.delete(self.keys.worker(self.worker_id))
        pipe.srem(self.keys.workers, self.worker_id)
        pipe.delete(self.keys.kv_snapshot(self.worker_id))
        pipe.delete(self.keys.kv_events(self.worker_id))
        await pipe.execute()

    async def heartbeat_now(self) -> None:
        """Publish the record at once (e.g. when draining starts)."""
        await self._heartbeat()

    # -- loops --------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await self._heartbeat()
            raise_if_cancelled()  # common/cancellation.py: redis-py may have swallowed it
            await asyncio.sleep(self.heartbeat_s)

    async def _heartbeat(self) -> None:
        try:
            rec = self.record()
            pipe = self._redis.pipeline()
            pipe.set(self.keys.worker(rec.worker_id), rec.to_json(), px=int(self.ttl_s * 1000))
            pipe.sadd(self.keys.workers, rec.worker_id)
            await pipe.execute()
            self._set_connected(True)
        except Exception as e:
            self._set_connected(False, e)

    async def _publish_loop(self) -> None:
        last_snapshot = 0.0
        while True:
            await self._drain_events()
            if self._snapshot_due or time.time() - last_snapshot > self.snapshot_every_s:
                if await self._write_snapshot():
                    last_snapshot = time.time()
            raise_if_cancelled()  # common/cancellation.py: redis-py may have swallowed it
            await asyncio.sleep(0.05)

    async def _drain_events(self) -> None:
        while self.events:
            self._convert(self.events.popleft())
        if not self._backlog:
            return
        try:
            pipe = self._redis.pipeline()
            for entry in self._backlog:
                pipe.xadd(self.keys.kv_events(self.worker_id), entry.to_fields(),
                          maxlen=_STREAM_MAXLEN, approximate=True)
            await pipe.execute()
            self._backlog.clear()
            self._set_connected(True)
        except Exception as e:
            self._set_connected(False, e)

    async def _write_snapshot(self) -> bool:
        import json

        try:
            body = json.dumps({"seq": self._seq, "hashes": [format(h, "x") for h in self._cached]})
            await self._redis.set(self.keys.kv_snapshot(self.worker_id), body)
            self._snapshot_due = False
            return True
        except Exception as e:
            self._set_connected(False, e)
            return False

    # -- helpers ------------------------------------------------------------------------------
    def _convert(self, event: KVEvent) -> None:
        if isinstance(event, BlockStored):
            self._cached.update(event.block_hashes)
            self._emit(KVEventEntry(self._next_seq(), STORED, event.block_hashes,
                                    event.parent_hash))
        elif isinstance(event, BlockRemoved):
            self._cached.difference_update(event.block_hashes)
            self._emit(KVEventEntry(self._next_seq(), REMOVED, event.block_hashes))
        elif isinstance(event, AllBlocksCleared):
            self._cached.clear()
            self._emit(KVEventEntry(self._next_seq(), CLEARED))

    def _emit(self, entry: KVEventEntry) -> None:
        self._backlog.append(entry)
        if len(self._backlog) > _MAX_BACKLOG:
            # Consumers will see a gap in seq and reload the snapshot written next.
            self._backlog.popleft()
            self._snapshot_due = True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _set_connected(self, ok: bool, error: Exception | None = None) -> None:
        if ok and self._connected is not True:
            log.info("connected to Redis at %s", redacted(self.redis_url))
            if self._connected is False:
                self._snapshot_due = True  # consumers may have missed events meanwhile
        elif not ok and self._connected is not False:
            log.warning("Redis at %s unavailable (%s); serving on, will retry",
                        redacted(self.redis_url), error)
        self._connected = ok
