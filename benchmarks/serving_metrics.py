"""Serving metrics from per-request timings: TTFT, TPOT, ITL, end-to-end latency, throughput,
goodput (requests per second meeting both SLOs), cached-token share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    sent_at: float
    prompt_tokens: int
    max_tokens: int
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each chunk
    done_at: float | None = None
    output_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done_at is not None and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.sent_at

    @property
    def e2e(self) -> float:
        return self.done_at - self.sent_at

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; None for single-token outputs."""
        if self.output_tokens < 2:
            return None
        return (self.chunk_times[-1] - self.chunk_times[0]) / (self.output_tokens - 1)

    def itls(self) -> list[float]:
        """Gaps between chunks, spread over the tokens each later chunk carried."""
        out = []
        for prev, cur, n in zip(self.chunk_times, self.chunk_times[1:], self.chunk_tokens[1:],
                                strict=False):
            out.extend([(cur - prev) / max(n, 1)] * max(n, 1))
        return out


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    return {"mean": sum(values) / len(values), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99)}


def aggregate(records: list[RequestRecord], duration_s: float, slo_ttft_s: float,
              slo_tpot_s: float) -> dict:
    ok = [r for r in records if r.ok]
    tpots = [r.tpot for r in ok if r.tpot is not None]
    good = [r for r in ok if r.ttft <= slo_ttft_s and (r.tpot is None or r.tpot <= slo_tpot_s)]
    prompt = sum(r.prompt_tokens for r in ok)
    return {
        "num_requests": len(records),
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "duration_s": duration_s,
        "ttft_s": summary([r.ttft for r in ok]),
        "tpot_s": summary(tpots),
        "itl_s": summary([x for r in ok for x in r.itls()]),
        "e2e_s": summary([r.e2e for r in ok]),
        "request_throughput": len(ok) / duration_s if duration_s else math.nan,
        "output_token_throughput": sum(r.output_tokens for r in ok) / duration_s
        if duration_s else math.nan,
        "goodput": len(good) / duration_s if duration_s else math.nan,
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s},
        "good_fraction": len(good) / len(ok) if ok else 0.0,
        "cached_token_share": sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0,
    }


def timeline(records: list[RequestRecord]) -> dict[str, list]:
    """Per completed request, in sending order: when it was sent (seconds since the first
    request), its TTFT and TPOT (None for a single-token output), for plots over time."""
    if not records:
        return {"sent_s": [], "ttft_s": [], "tpot_s": []}
    start = min(r.sent_at for r in records)
    ok = sorted((r for r in records if r.ok), key=lambda r: r.sent_at)
    return {"sent_s": [r.sent_at - start for r in ok], "ttft_s": [r.ttft for r in ok],
            "tpot_s": [r.tpot for r in ok]}
