"""Backpressure: a bounded number of requests in flight per decode worker, and a clear refusal
(429 + Retry-After, OpenAI's error shape) once every eligible worker is full, instead of queueing
without bound and letting every request's latency grow.

A request holds its slot from admission (before tokenization, so a refusal costs almost nothing)
until its response ends, whatever way it ends. The bound is ``limit × eligible decode workers``
for this router process: every admitted request ends up on a decode worker, and the dispatcher
places it on the least loaded one, so the sum reaching the bound means every worker holds about
``limit``. Counting per request, not per worker, also covers requests still in their prefill
(the per-worker load counters only see a decode stream once it starts). With N router
processes, each one bounds its own requests: the cluster-wide bound is N times this.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from router.errors import APIError

log = logging.getLogger(__name__)
_LOG_EVERY_S = 1.0  # under overload, one log line a second (with the count), not one a request


@dataclass(frozen=True)
class Rejection:
    status: int  # 429: saturated, retry soon; 503: no worker at all
    reason: str  # the metric label: overloaded | no_workers
    message: str
    retry_after_s: int

    def error(self) -> APIError:
        if self.status == 503:
            return APIError(503, self.message, type_="service_unavailable", code="no_workers",
                            headers={"Retry-After": str(self.retry_after_s)})
        # OpenAI's own 429 body: type "requests", code "rate_limit_exceeded".
        return APIError(429, self.message, type_="requests", code="rate_limit_exceeded",
                        headers={"Retry-After": str(self.retry_after_s)})


def decide(in_flight: int, eligible_workers: int, limit_per_worker: int,
           retry_after_s: int) -> Rejection | None:
    """None: admit. ``limit_per_worker`` 0 means unbounded."""
    if eligible_workers <= 0:
        return Rejection(503, "no_workers", "no decode worker is available", 2)
    if limit_per_worker > 0 and in_flight >= limit_per_worker * eligible_workers:
        return Rejection(429, "overloaded",
                         f"the cluster is saturated ({in_flight} requests in flight for "
                         f"{eligible_workers} decode worker(s), at most {limit_per_worker} each); "
                         f"retry after {retry_after_s}s", retry_after_s)
    return None


class Slot:
    """One admitted request; ``release`` is idempotent, so every exit path may call it."""

    __slots__ = ("_gate", "_held")

    def __init__(self, gate: Admission):
        self._gate = gate
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate.in_flight -= 1


class Admission:
    def __init__(self, limit_per_worker: int, retry_after_s: int, rejected_counter):
        self.limit_per_worker = limit_per_worker
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.rejected: dict[str, int] = {}
        self._counter = rejected_counter  # pdserve_router_rejected_total{reason}
        self._last_log = 0.0
        self._unlogged = 0

    def enter(self, eligible_workers: int) -> Slot:
        """A slot, or an APIError (429/503 with Retry-After) to raise to the client."""
        rejection = decide(self.in_flight, eligible_workers, self.limit_per_worker,
                           self.retry_after_s)
        if rejection is not None:
            self.reject(rejection)
            raise rejection.error()
        self.in_flight += 1
        return Slot(self)

    def reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason] = self.rejected.get(rejection.reason, 0) + 1
        self._counter.labels(rejection.reason).inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            log.warning("refused %d request(s) with %d (%s): %s", self._unlogged,
                        rejection.status, rejection.reason, rejection.message)
            self._last_log, self._unlogged = now, 0
