"""Keeps the prefix index in step with the workers' KV-event streams.

Each worker numbers its events 1, 2, 3...; a consumer that sees a gap (trimmed stream, Redis
restart, a worker that dropped events while Redis was away) reloads that worker's snapshot
(all cached hashes as of some seq) and continues after it. A worker that restarts starts again
at seq 1 with a ``cleared`` event, which resets its entries.
"""

from __future__ import annotations

import asyncio
import json
import logging

from common.cancellation import raise_if_cancelled
from common.redis_schema import CLEARED, REMOVED, STORED, Keys, KVEventEntry
from router.prefix_index import PrefixIndex
from router.registry import RegistryView

log = logging.getLogger(__name__)


class KVEventConsumer:
    def __init__(self, redis, keys: Keys, index: PrefixIndex, registry: RegistryView,
                 block_ms: int = 200, batch: int = 2000):
        self.redis = redis
        self.keys = keys
        self.index = index
        self.registry = registry
        self.block_ms = block_ms
        self.batch = batch
        self._last_id: dict[str, str] = {}
        self._last_seq: dict[str, int] = {}
        self._incarnation: dict[str, float] = {}
        self.num_resyncs = 0
        self.num_events = 0
        self._was_down = False

    def forget(self, worker_id: str) -> None:
        """The worker left: drop its entries and stream position."""
        self.index.drop_worker(worker_id)
        self._last_id.pop(worker_id, None)
        self._last_seq.pop(worker_id, None)
        self._incarnation.pop(worker_id, None)

    async def run(self) -> None:
        while True:
            try:
                read = await self.poll_once()
                raise_if_cancelled()  # common/cancellation.py: redis-py may have swallowed it
                if not read:
                    await asyncio.sleep(0.05)
                if self._was_down:
                    log.info("KV event streams reachable again; index rebuilt from snapshots")
                    self._was_down = False
            except Exception as e:
                if not self._was_down:
                    log.warning("reading KV events failed (%s); will rebuild the index", e)
                self._was_down = True
                # Whatever happened meanwhile, positions are unreliable: resync every worker.
                self._last_id.clear()
                self._last_seq.clear()
                raise_if_cancelled()
                await asyncio.sleep(0.5)

    async def poll_once(self) -> bool:
        """Read what is new on every stream; True if something was read."""
        workers = self.registry.workers
        for worker_id, record in workers.items():
            if self._incarnation.get(worker_id) != record.started_at:
                self._incarnation[worker_id] = record.started_at
                await self.resync(worker_id)
            elif worker_id not in self._last_id:
                await self.resync(worker_id)
        if not self._last_id:
            return False
        streams = {self.keys.kv_events(w): self._last_id[w] for w in self._last_id
                   if w in workers}
        if not streams:
            return False
        replies = await self.redis.xread(streams, count=self.batch, block=self.block_ms)
        for stream, entries in replies or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            worker_id = name.rsplit(":", 1)[1]
            for entry_id, fields in entries:
                self._last_id[worker_id] = entry_id.decode() if isinstance(entry_id, bytes) \
                    else entry_id
                await self._apply(worker_id, KVEventEntry.from_fields(fields))
        return bool(replies)

    async def _apply(self, worker_id: str, entry: KVEventEntry) -> None:
        last = self._last_seq.get(worker_id, 0)
        if entry.kind == CLEARED and entry.seq == 1:  # a fresh engine incarnation
            self.index.clear_worker(worker_id)
            self._last_seq[worker_id] = 1
            return
        if entry.seq <= last:
            return  # already covered by the snapshot we loaded
        if entry.seq != last + 1:
            log.warning("gap in KV events of %s (seq %d after %d): resynchronising",
                        worker_id, entry.seq, last)
            await self.resync(worker_id, keep_position=True)
            if entry.seq <= self._last_seq.get(worker_id, 0):
                return
        self._last_seq[worker_id] = entry.seq
        self.num_events += 1
        if entry.kind == STORED:
            self.index.add(worker_id, entry.hashes)
        elif entry.kind == REMOVED:
            self.index.remove(worker_id, entry.hashes)
        elif entry.kind == CLEARED:
            self.index.clear_worker(worker_id)

    async def resync(self, worker_id: str, keep_position: bool = False) -> None:
        """Rebuild a worker's entries from its snapshot; continue after the snapshot's seq."""
        self.num_resyncs += 1
        blob = await self.redis.get(self.keys.kv_snapshot(worker_id))
        self.index.clear_worker(worker_id)
        seq = 0
        if blob is not None:
            snapshot = json.loads(blob)
            seq = int(snapshot["seq"])
            self.index.add(worker_id, (int(h, 16) for h in snapshot["hashes"]))
        self._last_seq[worker_id] = seq
        if not keep_position:
            self._last_id[worker_id] = "0-0"  # replay; entries up to ``seq`` are skipped
