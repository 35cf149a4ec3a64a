"""Owner-side leases on blocks handed out for transfer (bookkeeping only, no I/O).

A lease ends when the receiver releases it or when its deadline passes. The owner frees the
blocks after a grace period past the deadline, so a receiver that checked the deadline before
starting its read never races the reuse of the blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class Lease:
    request_id: str
    block_ids: tuple[int, ...]
    deadline: float  # unix time the receiver sees in the handle


class LeaseTable:
    def __init__(self, grace_s: float = 1.0, clock: Callable[[], float] = time.time):
        self.grace_s = grace_s
        self.clock = clock
        self._leases: dict[str, Lease] = {}
        self.num_released = 0
        self.num_expired = 0

    def grant(self, request_id: str, block_ids: tuple[int, ...], lease_s: float) -> Lease:
        if request_id in self._leases:
            raise ValueError(f"request {request_id!r} already holds a lease")
        lease = Lease(request_id, tuple(block_ids), self.clock() + lease_s)
        self._leases[request_id] = lease
        return lease

    def release(self, request_id: str) -> Lease | None:
        """The receiver is done (or the request was aborted): end the lease now."""
        lease = self._leases.pop(request_id, None)
        if lease is not None:
            self.num_released += 1
        return lease

    def expire(self) -> list[Lease]:
        """End every lease whose deadline plus grace has passed."""
        now = self.clock()
        gone = [lease for lease in self._leases.values() if now > lease.deadline + self.grace_s]
        for lease in gone:
            del self._leases[lease.request_id]
        self.num_expired += len(gone)
        return gone

    def collect_ended(self, released_ids: Iterable[str]) -> list[tuple[str, str]]:
        """End the leases receivers released (``released_ids``, from whatever carries their
        notices) and those past their deadline: ``(request_id, "released" | "expired")``."""
        ended = [(rid, "released") for rid in released_ids if self.release(rid) is not None]
        ended.extend((lease.request_id, "expired") for lease in self.expire())
        return ended

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._leases
