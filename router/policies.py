"""Routing decisions as small pure functions, so they can be tested and compared offline.

Prefill placement (``kv_aware`` by default): a worker's cost is the prompt tokens it would
still have to compute after its cached prefix, plus the prefill work already queued on it:

    cost(w) = (prompt_tokens - cached_tokens(w)) + load_weight * queued_prefill_tokens(w)

Overlap wins until the other worker's queue is so much shorter that computing more there is
still cheaper — the trade-off ``load_weight`` sets. Ties are broken by a rotating counter, so
equal workers share load fairly. Fenced (unhealthy, draining) workers are never candidates:
callers pass only live ones.

Decode placement (``choose_decode``) weighs streams in flight against KV headroom; a stream
whose decode worker died continues on the same score among the workers it has not failed on
(``choose_migration_target``).

Where to prefill (``local_prefill_reason``): on the decode worker itself, or remotely with a
KV pull. The decode worker's own cached prefix decides what local prefill costs; the prefill
worker's, what the remote path costs (see that function).
"""

from __future__ import annotations

import random as _random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

POLICIES = ("kv_aware", "round_robin", "least_loaded", "random")


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    cached_tokens: int = 0  # predicted prefix-cache hit for this prompt
    queued_tokens: int = 0  # prefill tokens in flight on this worker (router's count)
    running: int = 0  # decode: streams in flight
    kv_usage: float = 0.0  # decode: share of KV blocks in use


@dataclass(frozen=True)
class PolicyWeights:
    load_weight: float = 1.0  # kv_aware: queued prefill tokens vs. tokens saved by the cache
    decode_kv_weight: float = 8.0  # decode: how much KV pressure counts against a worker
    decode_kv_limit: float = 0.95  # decode: avoid workers above this KV usage when possible
    # Local vs. remote prefill, in prefill-worker token computes. A token computed on the
    # decode worker costs more than one computed on a prefill worker: it stalls every stream
    # running there (a judgement, to be tuned with the benchmarks).
    local_compute_weight: float = 4.0
    # Pulling a token's KV vs. computing it: NIXL moves a Llama-8B token's 128 KiB at ~390 GB/s
    # on H200s (~3M tokens/s) where prefill computes ~10-50k tokens/s; ~0.05 is generous.
    transfer_weight: float = 0.05


def choose_prefill(policy: str, candidates: Sequence[Candidate], prompt_tokens: int,
                   weights: PolicyWeights, counter: int, rng: _random.Random | None = None
                   ) -> Candidate:
    """Pick the prefill worker. ``counter`` increases per request (round robin, tie breaks)."""
    if not candidates:
        raise ValueError("no prefill candidates")
    if policy == "round_robin":
        return candidates[counter % len(candidates)]
    if policy == "random":
        return (rng or _random).choice(list(candidates))
    if policy == "least_loaded":
        return _argmin(candidates, lambda c: c.queued_tokens, counter)
    if policy == "kv_aware":
        return _argmin(candidates, lambda c: prefill_cost(c, prompt_tokens, weights), counter)
    raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")


def prefill_cost(c: Candidate, prompt_tokens: int, weights: PolicyWeights) -> float:
    return (prompt_tokens - c.cached_tokens) + weights.load_weight * c.queued_tokens


def choose_decode(candidates: Sequence[Candidate], weights: PolicyWeights, counter: int
                  ) -> Candidate:
    """Decode placement by load and KV headroom (workers near full only if all are)."""
    if not candidates:
        raise ValueError("no decode candidates")
    roomy = [c for c in candidates if c.kv_usage < weights.decode_kv_limit] or list(candidates)
    return _argmin(roomy, lambda c: c.running + weights.decode_kv_weight * c.kv_usage, counter)


def choose_migration_target(candidates: Sequence[Candidate], failed_ids: Collection[str],
                            weights: PolicyWeights, counter: int) -> Candidate | None:
    """Where a decode stream continues after its worker failed: the decode placement among
    the workers this request has not failed on yet, or None when none is left."""
    others = [c for c in candidates if c.worker_id not in failed_ids]
    return choose_decode(others, weights, counter) if others else None


def prefill_saturated(candidates: Sequence[Candidate], saturation_tokens: int) -> bool:
    """Every prefill worker has at least ``saturation_tokens`` queued: queueing behind them
    costs more than prefilling on the decode worker. False with no candidates (that case is
    ``local_prefill_reason``'s "no_prefill_workers")."""
    return bool(candidates) and all(c.queued_tokens >= saturation_tokens for c in candidates)


LOCAL_REASONS = ("no_prefill_workers", "saturated", "short_uncached", "cached_here")


def local_prefill_reason(prompt_tokens: int, cached_here_tokens: int, cached_there_tokens: int,
                         threshold_tokens: int, num_prefill_workers: int,
                         prefill_saturated: bool, weights: PolicyWeights) -> str | None:
    """Conditional disaggregation: why to prefill on the decode worker, or None for remote.

    ``cached_here_tokens``: the decode worker's own cached prefix of the prompt (what it would
    not compute locally, and not pull either: a pull reuses local hits). ``cached_there``: the
    chosen prefill worker's. The local path computes ``uncached_here`` on the decode worker;
    the remote path computes ``uncached_there`` on the prefill worker and pulls
    ``uncached_here`` tokens of KV. So a prompt cached on either side is served from that
    cache, never recomputed where it is missing. In order:

    - no prefill worker: local is the only way ("no_prefill_workers");
    - every prefill worker saturated: local rather than queue ("saturated");
    - ``uncached_here`` at or below the threshold: cheaper here than the remote hop
      ("short_uncached");
    - local compute costs no more than the remote path ("cached_here": the decode worker
      holds most of what the prefill worker would have to compute).
    """
    if num_prefill_workers == 0:
        return "no_prefill_workers"
    if prefill_saturated:
        return "saturated"
    uncached_here = max(prompt_tokens - cached_here_tokens, 0)
    uncached_there = max(prompt_tokens - cached_there_tokens, 0)
    if uncached_here <= threshold_tokens:
        return "short_uncached"
    local_cost = weights.local_compute_weight * uncached_here
    remote_cost = uncached_there + weights.transfer_weight * uncached_here
    if local_cost <= remote_cost:
        return "cached_here"
    return None


def _argmin(candidates: Sequence[Candidate], key, counter: int) -> Candidate:
    scored = [(key(c), c) for c in candidates]
    best = min(score for score, _ in scored)
    ties = [c for score, c in scored if score <= best + 1e-9]
    return ties[counter % len(ties)]
