"""In-memory prefix index: which workers hold which blocks (block hash -> workers).

Built only from the workers' KV-event streams, so routing never asks Redis per request. Each
worker is a small integer slot; a hash maps to a bitmask of slots, which keeps a million
indexed blocks in one dict of ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class PrefixIndex:
    def __init__(self) -> None:
        self._holders: dict[int, int] = {}  # block hash -> bitmask of worker slots
        self._slots: dict[str, int] = {}  # worker id -> slot
        self._free_slots: list[int] = []
        self._blocks_of: dict[str, set[int]] = {}  # worker id -> hashes it holds

    # -- updates ------------------------------------------------------------------------------
    def add(self, worker_id: str, hashes: Iterable[int]) -> None:
        bit = 1 << self._slot(worker_id)
        held = self._blocks_of[worker_id]
        for h in hashes:
            self._holders[h] = self._holders.get(h, 0) | bit
            held.add(h)

    def remove(self, worker_id: str, hashes: Iterable[int]) -> None:
        slot = self._slots.get(worker_id)
        if slot is None:
            return
        mask = ~(1 << slot)
        held = self._blocks_of[worker_id]
        for h in hashes:
            if h in held:
                held.discard(h)
                remaining = self._holders[h] & mask
                if remaining:
                    self._holders[h] = remaining
                else:
                    del self._holders[h]

    def clear_worker(self, worker_id: str) -> None:
        """Forget everything a worker held (it reset its cache, left, or was fenced)."""
        if worker_id not in self._slots:
            return
        self.remove(worker_id, list(self._blocks_of[worker_id]))

    def drop_worker(self, worker_id: str) -> None:
        self.clear_worker(worker_id)
        slot = self._slots.pop(worker_id, None)
        if slot is not None:
            self._free_slots.append(slot)
            del self._blocks_of[worker_id]

    # -- queries ------------------------------------------------------------------------------
    def overlap(self, hashes: Sequence[int], worker_ids: Iterable[str]) -> dict[str, int]:
        """Leading blocks of ``hashes`` each worker holds (a prefix match, like its cache)."""
        result = {}
        pending = {}
        for w in worker_ids:
            slot = self._slots.get(w)
            result[w] = 0
            if slot is not None:
                pending[w] = 1 << slot
        for i, h in enumerate(hashes):
            if not pending:
                break
            mask = self._holders.get(h, 0)
            for w, bit in list(pending.items()):
                if mask & bit:
                    result[w] = i + 1
                else:
                    del pending[w]
        return result

    def num_blocks(self, worker_id: str | None = None) -> int:
        if worker_id is None:
            return len(self._holders)
        return len(self._blocks_of.get(worker_id, ()))

    @property
    def workers(self) -> list[str]:
        return list(self._slots)

    def _slot(self, worker_id: str) -> int:
        slot = self._slots.get(worker_id)
        if slot is None:
            slot = self._free_slots.pop() if self._free_slots else len(self._slots)
            self._slots[worker_id] = slot
            self._blocks_of[worker_id] = set()
        return slot
