"""The router's own count of work it has in flight on each worker (no Redis on the hot path).

Registry records give each worker's queue as of its last heartbeat; these counters are exact
for this router and change the moment a request is placed or finishes.

Invariant: a counter is never negative. Every decrement is paired with the increment of the
same placement (the context managers below), and ``forget`` never throws away a counter that
work in flight still holds: it only marks the worker gone, and the counter is dropped once its
last placement ends. So a worker that leaves the registry and comes back (a Redis outage, a
missed heartbeat) keeps counting the streams it is really running, and those streams, when they
end, decrement the count they incremented rather than a fresh zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class _Counts(Mapping[str, int]):
    """Read-only view: ``view[worker_id]`` is 0 for a worker with nothing in flight."""

    def __init__(self, values: dict[str, int]):
        self._values = values

    def __getitem__(self, worker_id: str) -> int:
        return self._values.get(worker_id, 0)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class LoadTracker:
    def __init__(self) -> None:
        self._prefill_tokens: dict[str, int] = {}  # uncached tokens being prefilled
        self._decode_streams: dict[str, int] = {}
        self._gone: set[str] = set()  # forgotten workers whose counters still drain
        self.prefill_tokens: Mapping[str, int] = _Counts(self._prefill_tokens)
        self.decode_streams: Mapping[str, int] = _Counts(self._decode_streams)

    @contextmanager
    def prefilling(self, worker_id: str, tokens: int):
        assert tokens >= 0, tokens
        with self._hold(self._prefill_tokens, worker_id, tokens):
            yield

    @contextmanager
    def decoding(self, worker_id: str):
        with self._hold(self._decode_streams, worker_id, 1):
            yield

    def forget(self, worker_id: str) -> None:
        """The worker left the registry: drop its counters once nothing is in flight there."""
        self._gone.add(worker_id)
        for counts in (self._prefill_tokens, self._decode_streams):
            if counts.get(worker_id) == 0:
                del counts[worker_id]
        if not self._holds(worker_id):
            self._gone.discard(worker_id)

    @contextmanager
    def _hold(self, counts: dict[str, int], worker_id: str, amount: int):
        # A new placement means the worker is in the registry again.
        self._gone.discard(worker_id)
        counts[worker_id] = counts.get(worker_id, 0) + amount
        try:
            yield
        finally:
            left = counts.get(worker_id, 0) - amount
            assert left >= 0, (worker_id, left)
            counts[worker_id] = left
            if left == 0 and worker_id in self._gone:
                del counts[worker_id]
                if not self._holds(worker_id):
                    self._gone.discard(worker_id)

    def _holds(self, worker_id: str) -> bool:
        return worker_id in self._prefill_tokens or worker_id in self._decode_streams
