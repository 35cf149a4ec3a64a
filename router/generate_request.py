"""One request as the dispatcher takes it: what the API layer made of the HTTP body."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.sampling_params import SamplingParams


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: tuple[str, ...] = ()  # extra keys of every block hash (tenant, cache_salt)
    # Called once when the request ends, with its prompt and output token counts (per-key
    # token rate limits charge them there: router/rate_limit.py).
    on_finish: Callable[[int, int], None] | None = None
    # Pin to this decode worker and prefill there (choices 2..n of one prompt: its KV is
    # there already, router/choices.py); None: route as usual.
    decode_worker_id: str | None = None
