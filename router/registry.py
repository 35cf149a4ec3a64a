"""The router's view of the workers, refreshed from the Redis registry in the background.

Routing reads only this in-memory view. A worker that failed an RPC is fenced locally for a
while. When Redis is away the last known view stays in use (load-only routing goes on).

Liveness is judged by Redis's clock, not the router's: a worker is live while its record
exists, and the record's TTL (set at every heartbeat) is counted by Redis from the moment it
stored that heartbeat. No clock of the router or of a worker takes part, so skew between hosts
evicts nobody. A worker whose record expired (or that deregistered) leaves the view at once
(``on_leave`` drops its index entries).

Across a Redis outage (a stall, a restart) that rule alone would be wrong: nobody could
heartbeat, so every record expires, or vanishes with a restarted Redis, at the same moment,
and no worker is to blame. So absence is only evidence once Redis has been serving for a whole
TTL: for ``ttl_s`` after the router reads Redis again, workers it knew stay in the view even
without a record (workers re-register within a heartbeat or two), and only then are the ones
still missing evicted. An "outage" is any read that failed, or a gap of more than a TTL
between two successful reads (e.g. one read blocked that long).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common import defaults
from common.cancellation import raise_if_cancelled
from common.cluster_secret import ClusterSecret
from common.redis_schema import Keys, WorkerRecord

log = logging.getLogger(__name__)


class RegistryView:
    def __init__(self, redis, keys: Keys, ttl_s: float = defaults.WORKER_RECORD_TTL_S, poll_s: float = 0.5,
                 on_leave: Callable[[str], None] = lambda worker_id: None,
                 on_change: Callable[[], None] = lambda: None,
                 secret: ClusterSecret | None = None):
        """``secret``: only records signed with it are used (None: every record, --insecure)."""
        self.redis = redis
        self.secret = secret
        self._refused: set[tuple[str, str]] = set()  # (worker id, signature) already logged
        self.keys = keys
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.on_leave = on_leave
        self.on_change = on_change
        self.workers: dict[str, WorkerRecord] = {}
        self._fenced_until: dict[str, float] = {}
        self.redis_ok: bool | None = None
        self.last_refresh = 0.0
        self._last_read_at: float | None = None  # monotonic time of the last successful read
        self._grace_until = 0.0  # monotonic: until then, missing records evict nobody

    async def run(self) -> None:
        while True:
            await self.refresh()
            raise_if_cancelled()  # common/cancellation.py: redis-py may have swallowed it
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
        now = time.monotonic()
        outage = self.redis_ok is False or (
            self._last_read_at is not None and now - self._last_read_at > self.ttl_s)
        if outage:
            self._grace_until = now + self.ttl_s
            log.info("Redis is back: keeping the %d known workers for %.1fs while they "
                     "heartbeat again", len(self.workers), self.ttl_s)
        self.redis_ok = True
        self._last_read_at = now
        fresh: dict[str, WorkerRecord] = {}
        for worker_id, blob in zip(ids, raw, strict=True):
            if blob is not None:  # None: the TTL ran out on Redis's clock, or it deregistered
                record = self._trusted(worker_id, blob)
                if record is not None:
                    fresh[worker_id] = record
        if now < self._grace_until:
            for worker_id, record in self.workers.items():
                fresh.setdefault(worker_id, record)
        changed = set(fresh) != set(self.workers)
        for gone in set(self.workers) - set(fresh):
            log.warning("worker %s left the registry (%s)",
                        gone, self.workers[gone].address)
            self.on_leave(gone)
        for joined in set(fresh) - set(self.workers):
            log.info("worker %s joined: %s at %s", joined, fresh[joined].role,
                     fresh[joined].address)
        self.workers = fresh
        self.last_refresh = time.time()
        if changed:
            self.on_change()

    def _trusted(self, worker_id: str, blob: bytes) -> WorkerRecord | None:
        """The record, if it parses, names its own key's id, and carries a valid signature.
        Anything else was not written by a worker of this cluster: never routed to, logged
        once per (id, signature)."""
        try:
            record = WorkerRecord.from_json(blob)
        except (ValueError, TypeError) as e:
            return self._refuse(worker_id, "", f"unreadable record ({e})")
        if record.worker_id != worker_id:
            return self._refuse(worker_id, record.signature,
                                f"record names another worker ({record.worker_id!r})")
        if self.secret is not None and not record.verified_by(self.secret):
            why = "unsigned" if not record.signature else "bad signature"
            return self._refuse(worker_id, record.signature,
                                f"{why} record (address {record.address}): not written by a "
                                "holder of this cluster's secret")
        return record

    def _refuse(self, worker_id: str, signature: str, why: str) -> None:
        if (worker_id, signature) not in self._refused:
            self._refused.add((worker_id, signature))
            log.warning("ignoring registry entry %r: %s", worker_id, why)
        return None

    def fence(self, worker_id: str, seconds: float) -> None:
        """Keep a worker out of rotation for a while (it just failed a call)."""
        self._fenced_until[worker_id] = time.monotonic() + seconds

    def is_fenced(self, worker_id: str) -> bool:
        until = self._fenced_until.get(worker_id)
        if until is None:
            return False
        if time.monotonic() >= until:
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
