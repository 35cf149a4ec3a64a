"""Rate limits per API key: requests per second and tokens per second, refused with OpenAI's
429 (``Retry-After`` saying when the key may send again) before any work is done.

Two token buckets per key. The request bucket is taken from at admission. Tokens (prompt and
output) are only known as a request runs, so they are charged when it ends and the token bucket
may go into debt: a key in debt is refused until the debt is paid back at ``tokens_per_s``. A
burst of concurrent requests can therefore overshoot by what it has in flight, never for long.

The keys are the configured API keys (without keys: one bucket for everyone). With N router
processes each enforces 1/N of the limits: the kernel spreads connections over the processes,
so the cluster-wide rate is about the configured one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from router.errors import APIError


@dataclass(frozen=True)
class RateLimits:
    requests_per_s: float = 0.0  # 0: unlimited
    tokens_per_s: float = 0.0  # prompt + output tokens; 0: unlimited
    burst_s: float = 2.0  # a key may spend this many seconds' worth at once

    @property
    def enabled(self) -> bool:
        return self.requests_per_s > 0 or self.tokens_per_s > 0

    def per_process(self, processes: int) -> RateLimits:
        return RateLimits(self.requests_per_s / processes, self.tokens_per_s / processes,
                          self.burst_s)


class _Bucket:
    __slots__ = ("rate", "capacity", "level", "updated")

    def __init__(self, rate: float, capacity: float):
        self.rate, self.capacity = rate, capacity
        self.level, self.updated = capacity, time.monotonic()

    def refill(self) -> float:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        return self.level

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) / self.rate)


class KeyRateLimiter:
    def __init__(self, limits: RateLimits, rejected_counter=None):
        self.limits = limits
        self._requests: dict[str | None, _Bucket] = {}
        self._tokens: dict[str | None, _Bucket] = {}
        self._counter = rejected_counter  # pdserve_router_rejected_total{reason}
        self.rejected = 0

    def admit(self, key: str | None) -> None:
        """Take one request from ``key``'s budget, or raise 429 (nothing else is touched)."""
        lim = self.limits
        tokens = self._bucket(self._tokens, key, lim.tokens_per_s)
        if tokens is not None and tokens.refill() < 0:
            self._refuse("tokens", f"{lim.tokens_per_s:g} tokens/s", tokens.seconds_until(0.0))
        requests = self._bucket(self._requests, key, lim.requests_per_s)
        if requests is not None:
            if requests.refill() < 1.0:
                self._refuse("requests", f"{lim.requests_per_s:g} requests/s",
                             requests.seconds_until(1.0))
            requests.level -= 1.0

    def charge(self, key: str | None, num_tokens: int) -> None:
        """A request of ``key`` ended having used ``num_tokens`` (prompt + output)."""
        tokens = self._bucket(self._tokens, key, self.limits.tokens_per_s)
        if tokens is not None:
            tokens.refill()
            tokens.level -= num_tokens

    def _bucket(self, table: dict, key: str | None, rate: float) -> _Bucket | None:
        if rate <= 0:
            return None
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = _Bucket(rate, max(1.0, rate * self.limits.burst_s))
        return bucket

    def _refuse(self, kind: str, limit: str, wait_s: float) -> None:
        self.rejected += 1
        if self._counter is not None:
            self._counter.labels(f"rate_limit_{kind}").inc()
        retry = max(1, math.ceil(wait_s))
        raise APIError(429, f"rate limit reached for this API key: {limit}; retry after {retry}s",
                       type_=kind, code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
