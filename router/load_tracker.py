"""The router's own count of work it has in flight on each worker (no Redis on the hot path).

Registry records give each worker's queue as of its last heartbeat; these counters are exact
for this router and change the moment a request is placed or finishes.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager


class LoadTracker:
    def __init__(self) -> None:
        self.prefill_tokens: dict[str, int] = defaultdict(int)  # uncached tokens being prefilled
        self.decode_streams: dict[str, int] = defaultdict(int)

    @contextmanager
    def prefilling(self, worker_id: str, tokens: int):
        self.prefill_tokens[worker_id] += tokens
        try:
            yield
        finally:
            self.prefill_tokens[worker_id] -= tokens

    @contextmanager
    def decoding(self, worker_id: str):
        self.decode_streams[worker_id] += 1
        try:
            yield
        finally:
            self.decode_streams[worker_id] -= 1

    def forget(self, worker_id: str) -> None:
        self.prefill_tokens.pop(worker_id, None)
        self.decode_streams.pop(worker_id, None)
