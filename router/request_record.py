"""What one request did, filled in as its events pass: the source of its latency metrics, its
outcome count and its one log line.

The outcome is decided by what the client was given, not by how the generator ended: a request
is ``ok`` as soon as the event carrying its finish reason is handed over, before the consumer
closes the stream (an SSE response closes the generator right after the last event, so anything
decided after the final ``yield`` would never run). Only a request closed *before* its finish
reason is ``cancelled``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.metrics import RouterMetrics

log = logging.getLogger("router.requests")

# Outcomes, as the label of pdserve_router_requests_total.
OK, CANCELLED, REJECTED, ERROR = "ok", "cancelled", "rejected", "error"


@dataclass
class RequestRecord:
    request_id: str
    prompt_tokens: int
    started_s: float = field(default_factory=time.perf_counter)
    prefill_worker: str = "local"  # the remote prefill worker that produced the first token
    decode_worker: str = "-"
    cached_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    outcome: str = ERROR
    on_close: Callable[[int, int], None] | None = None  # (prompt_tokens, output_tokens)
    _last_token_s: float | None = None
    _closed: bool = False

    def on_event(self, metrics: RouterMetrics, token_ids: list[int], num_cached_tokens: int,
                 finish_reason: str | None) -> None:
        """Call just before handing an event to the consumer."""
        now = time.perf_counter()
        if token_ids:
            if self.ttft_s is None:
                self.ttft_s = now - self.started_s
                metrics.ttft.observe(self.ttft_s)
            elif self._last_token_s is not None:
                metrics.itl.observe((now - self._last_token_s) / len(token_ids))
            self._last_token_s = now
        self.output_tokens += len(token_ids)
        self.cached_tokens = max(self.cached_tokens, num_cached_tokens)
        if finish_reason:
            self.outcome = OK

    def interrupted(self, outcome: str) -> None:
        """The generator ended by an exception; a request already delivered stays ``ok``."""
        if self.outcome != OK:
            self.outcome = outcome

    def close(self, metrics: RouterMetrics, policy: str) -> None:
        if self._closed:
            return
        self._closed = True
        e2e_s = time.perf_counter() - self.started_s
        if self.outcome == OK:  # latency of answered requests; the rest count by outcome
            metrics.e2e.observe(e2e_s)
        metrics.requests.labels(policy, self.outcome).inc()
        log.info("request %s prefill=%s decode=%s prompt_tokens=%d cached_tokens=%d "
                 "output_tokens=%d ttft_ms=%s e2e_ms=%.1f outcome=%s", self.request_id,
                 self.prefill_worker, self.decode_worker, self.prompt_tokens,
                 self.cached_tokens, self.output_tokens,
                 "-" if self.ttft_s is None else f"{self.ttft_s * 1e3:.1f}", e2e_s * 1e3,
                 self.outcome)
        if self.on_close is not None:
            self.on_close(self.prompt_tokens, self.output_tokens)
