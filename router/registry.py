"""The router's view of the workers, refreshed from the Redis registry in the background.

Routing reads only this in-memory view. A worker whose record disappears or stops
heartbeating leaves the view at once (``on_leave`` drops its index entries); a worker that
failed an RPC is fenced locally for a while. When Redis is away the last known view stays in
use (load-only routing goes on), and freshness checks pause until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cluster.schema import Keys, WorkerRecord

log = logging.getLogger(__name__)


class RegistryView:
    def __init__(self, redis, keys: Keys, ttl_s: float = 5.0, poll_s: float = 0.5,
                 on_leave: Callable[[str], None] = lambda worker_id: None,
                 on_change: Callable[[], None] = lambda: None):
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.on_leave = on_leave
        self.on_change = on_change
        self.workers: dict[str, WorkerRecord] = {}
        self._fenced_until: dict[str, float] = {}
        self.redis_ok: bool | None = None
        self.last_refresh = 0.0

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        try:
            ids = sorted(m.decode() for m in await self.redis.smembers(self.keys.workers))
            raw = await self.redis.mget([self.keys.worker(i) for i in ids]) if ids else []
        except Exception as e:
            if self.redis_ok is not False:
                log.warning("Redis unavailable (%s): routing on the last known %d workers",
                            e, len(self.workers))
            self.redis_ok = False
            return
        if self.redis_ok is False:
            log.info("Redis is back: registry refreshed")
        self.redis_ok = True
        now = time.time()
        fresh: dict[str, WorkerRecord] = {}
        for worker_id, blob in zip(ids, raw, strict=True):
            if blob is None:
                continue  # TTL ran out: the worker is gone
            record = WorkerRecord.from_json(blob)
            if now - record.heartbeat_at > self.ttl_s:
                continue
            fresh[worker_id] = record
        changed = set(fresh) != set(self.workers)
        for gone in set(self.workers) - set(fresh):
            log.warning("worker %s left the registry (%s); fenced",
                        gone, self.workers[gone].address)
            self.on_leave(gone)
        for joined in set(fresh) - set(self.workers):
            log.info("worker %s joined: %s at %s", joined, fresh[joined].role,
                     fresh[joined].address)
        self.workers = fresh
        self.last_refresh = now
        if changed:
            self.on_change()

    def fence(self, worker_id: str, seconds: float) -> None:
        """Keep a worker out of rotation for a while (it just failed a call)."""
        self._fenced_until[worker_id] = time.time() + seconds

    def is_fenced(self, worker_id: str) -> bool:
        until = self._fenced_until.get(worker_id)
        if until is None:
            return False
        if time.time() >= until:
            del self._fenced_until[worker_id]
            return False
        return True

    def live(self, role: str) -> list[WorkerRecord]:
        """Workers that may take new requests in ``role`` (prefill or decode)."""
        out = []
        for record in self.workers.values():
            if record.draining or self.is_fenced(record.worker_id):
                continue
            if (role == "prefill" and record.can_prefill) or (
                    role == "decode" and record.can_decode):
                out.append(record)
        return out
