"""Routing decisions as small pure functions, so they can be tested and compared offline.

Prefill placement (``kv_aware`` by default): a worker's cost is the prompt tokens it would
still have to compute after its cached prefix, plus the prefill work already queued on it:

    cost(w) = (prompt_tokens - cached_tokens(w)) + load_weight * queued_prefill_tokens(w)

Overlap wins until the other worker's queue is so much shorter that computing more there is
still cheaper — the trade-off ``load_weight`` sets. Ties are broken by a rotating counter, so
equal workers share load fairly. Fenced (unhealthy, draining) workers are never candidates:
callers pass only live ones.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
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


def should_prefill_locally(uncached_tokens: int, threshold_tokens: int, num_prefill_workers: int,
                           prefill_saturated: bool) -> bool:
    """Conditional disaggregation: skip the remote prefill when it cannot pay off.

    Short uncached work costs less on the decode worker than a KV transfer; with no prefill
    worker, or every one saturated, local prefill is the only way forward.
    """
    return num_prefill_workers == 0 or prefill_saturated or uncached_tokens <= threshold_tokens


def _argmin(candidates: Sequence[Candidate], key, counter: int) -> Candidate:
    scored = [(key(c), c) for c in candidates]
    best = min(score for score, _ in scored)
    ties = [c for score, c in scored if score <= best + 1e-9]
    return ties[counter % len(ties)]
