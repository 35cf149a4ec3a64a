"""The engine's side of KV transfer, for both roles.

Owner (prefill role): a finished request's blocks stay referenced under a lease instead of
returning to the pool; they are released when the receiver says so or the lease expires (and
stay in the prefix cache afterwards).

Receiver (decode role): a request prefilled elsewhere gets local blocks (reusing any local
prefix-cache hits), pulls only the blocks it lacks, and joins the running batch once every
byte has arrived. A failed pull frees its blocks and ends the request with an error; an aborted
pull keeps its blocks until the transfer has stopped writing into them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from engine.core.kv_cache_manager import KVCacheManager
from engine.core.scheduler import Scheduler
from engine.core.sequence import FinishReason, Sequence, SequenceStatus
from kv_transfer.connector import KVConnector
from kv_transfer.handle import KVCompat, KVHandle

log = logging.getLogger(__name__)


@dataclass
class _Incoming:
    seq: Sequence
    handle: KVHandle
    aborted: bool = False
    released: bool = False  # the owner has been told


@dataclass
class TransferStats:
    num_held: int = 0
    num_pulling: int = 0
    leases_released: int = 0
    leases_expired: int = 0
    pulls_ok: int = 0
    pulls_failed: int = 0
    bytes_pulled: int = 0
    seconds_pulling: float = 0.0


class RemoteKV:
    def __init__(self, connector: KVConnector, compat: KVCompat, kv: KVCacheManager,
                 scheduler: Scheduler, lease_s: float):
        self.connector = connector
        self.compat = compat
        self.kv = kv
        self.scheduler = scheduler
        self.lease_s = lease_s
        self._held: dict[str, list[int]] = {}  # owner: request id -> held block ids
        self._queued: deque[_Incoming] = deque()  # receiver: waiting for local blocks
        self._pulling: dict[str, _Incoming] = {}
        self.stats = TransferStats()

    # -- owner --------------------------------------------------------------------------------
    def hold(self, seq: Sequence) -> KVHandle:
        """Keep a finished prefill's blocks for a receiver; the scheduler did not free them."""
        num_blocks = self.kv.blocks_needed(seq.num_computed_tokens)
        keep, extra = seq.block_ids[:num_blocks], seq.block_ids[num_blocks:]
        self.kv.pool.release(list(reversed(extra)))
        seq.block_ids = []
        self._held[seq.request_id] = keep
        handle = self.connector.describe(seq.request_id, keep, seq.num_computed_tokens,
                                         self.lease_s)
        self._count()
        return handle

    def drop_hold(self, request_id: str) -> bool:
        """The request was aborted on the owner: end its lease and free its blocks now."""
        blocks = self._held.pop(request_id, None)
        if blocks is None:
            return False
        self.connector.revoke(request_id)
        self.kv.pool.release(list(reversed(blocks)))
        self._count()  # no engine step may follow to refresh the counts (nothing else to do)
        return True

    # -- receiver -----------------------------------------------------------------------------
    def receive(self, seq: Sequence, handle: KVHandle) -> None:
        """Queue a prefilled sequence (prompt + first token) whose prompt KV is at ``handle``."""
        handle.check_receivable(self.compat)
        seq.status = SequenceStatus.WAITING_FOR_KV
        self._queued.append(_Incoming(seq, handle))

    def abort(self, request_id: str) -> bool:
        """Drop a received request; its owner is told at once, so it frees the held blocks.

        A pull in flight keeps its local blocks until the transfer has stopped writing into
        them, but the owner need not wait for that: the read only reads its memory, and what
        it reads into an aborted request's blocks is never used (nor cached).
        """
        for item in self._queued:
            if item.seq.request_id == request_id:
                self._queued.remove(item)
                self._release(item)
                return True
        item = self._pulling.get(request_id)
        if item is not None:
            item.aborted = True  # its blocks are freed when the transfer has ended
            self._release(item)
            return True
        return False

    @property
    def num_held(self) -> int:
        return len(self._held)

    @property
    def num_waiting(self) -> int:
        return len(self._queued) + len(self._pulling)

    # -- every engine step --------------------------------------------------------------------
    def advance(self) -> list[Sequence]:
        """Release ended leases, start queued pulls, collect finished ones.

        Returns the sequences that ended here (failed or aborted transfers), finished with
        their reason set; ready ones have joined the scheduler's running batch.
        """
        for rid, reason in self.connector.collect_ended_leases():
            blocks = self._held.pop(rid, None)
            if blocks is not None:
                self.kv.pool.release(list(reversed(blocks)))
                if reason == "expired":
                    self.stats.leases_expired += 1
                    log.warning("KV lease of %s expired before a receiver released it", rid)
                else:
                    self.stats.leases_released += 1
        ended: list[Sequence] = []
        while self._queued:
            item = self._queued[0]
            try:
                if not self._start(item):
                    break  # blocks are short: requests wait (backpressure), in order
            except Exception as e:  # a pull that could not even be posted
                self._pulling.pop(item.seq.request_id, None)
                self._fail(item, f"KV pull could not start: {e}", ended)
            self._queued.popleft()
        for result in self.connector.poll_pulls():
            item = self._pulling.pop(result.pull_id, None)
            if item is None:
                continue
            if result.ok and not item.aborted:
                self.stats.pulls_ok += 1
                self.stats.bytes_pulled += result.num_bytes
                self.stats.seconds_pulling += result.seconds
                self._ready(item)
                continue
            self._fail(item, result.error, ended)
        self._count()
        return ended

    def _count(self) -> None:
        self.stats.num_held = len(self._held)
        self.stats.num_pulling = len(self._pulling)

    def _release(self, item: _Incoming) -> None:
        """Tell the owner it may free the handle's blocks (once per received request)."""
        if not item.released:
            item.released = True
            self.connector.release(item.handle)

    def _fail(self, item: _Incoming, error: str | None, ended: list[Sequence]) -> None:
        seq = item.seq
        self.kv.free(seq)
        self._release(item)
        seq.status = SequenceStatus.FINISHED
        if item.aborted:
            seq.finish_reason = FinishReason.ABORT
        else:
            self.stats.pulls_failed += 1
            seq.finish_reason, seq.error = FinishReason.ERROR, error
            log.error("KV pull for %s failed: %s", seq.request_id, error)
        ended.append(seq)

    def _start(self, item: _Incoming) -> bool:
        """Allocate blocks and start the pull; False when blocks are short (try next step)."""
        seq, handle = item.seq, item.handle
        # Blocks for the prompt only: the first token is computed here, by the next step.
        num_cached_tokens = self.kv.admit(seq, handle.num_tokens)
        if num_cached_tokens is None:
            return False
        num_hit = num_cached_tokens // self.kv.block_size
        num_needed = self.kv.blocks_needed(handle.num_tokens)
        src = list(handle.block_ids[num_hit:num_needed])
        dst = seq.block_ids[num_hit:num_needed]
        self._pulling[seq.request_id] = item
        if src:
            self.connector.start_pull(seq.request_id, handle, src, dst)
        else:  # everything was cached locally: nothing to move
            self._pulling.pop(seq.request_id)
            self._ready(item)
        return True

    def _ready(self, item: _Incoming) -> None:
        seq = item.seq
        seq.num_computed_tokens = item.handle.num_tokens
        self.kv.cache_full_blocks(seq)
        self._release(item)
        self.scheduler.admit_prefilled(seq)
