"""Router configuration: one frozen dataclass, built at the edge (CLI) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from common import defaults
from common.cluster_secret import ClusterSecret
from router.policies import PolicyWeights
from router.rate_limit import RateLimits


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = defaults.REDIS_URL
    redis_prefix: str = defaults.REDIS_KEY_PREFIX
    model: str = "demo"  # what the workers serve: 'demo', a HF dir, a .gguf, random:<shape>
    served_model_name: str | None = None  # name clients use; default: the model's name
    tokenizer: str | None = None  # directory with tokenizer.json; default: from --model
    policy: str = "kv_aware"
    weights: PolicyWeights = field(default_factory=PolicyWeights)
    local_prefill_threshold_tokens: int = 32  # uncached tokens at or below: prefill on decode
    prefill_saturation_tokens: int = 65536  # queued tokens per prefill worker = saturated
    max_prefill_attempts: int = 3
    max_migrations: int = 2
    fence_s: float = 5.0  # a worker that failed a call stays out of rotation this long
    prefill_timeout_s: float = 300.0
    request_timeout_s: float = 3600.0
    block_size: int = defaults.BLOCK_SIZE_TOKENS  # must match the workers (their records say so)
    hash_seed: str = defaults.HASH_SEED
    max_body_bytes: int = 8 << 20
    api_keys: frozenset[str] = frozenset()  # empty: no authentication
    # With API keys: each key hashes its blocks in a prefix-cache namespace of its own
    # (router/tenancy.py); True shares one cache across keys (explicit opt-in).
    share_cache_across_keys: bool = False
    docs: bool = False  # serve /docs, /redoc and /openapi.json (behind the key, if any)
    max_model_len: int | None = None  # default: the smallest among decode workers
    # When a request omits max_tokens: at most this many tokens (0: the rest of the context,
    # vLLM's default), so a chat request cannot run to the context limit by accident.
    max_tokens_default: int = 1024
    lenient: bool = False  # ignore (with a warning) request fields we do not implement
    chat_template: str | None = None  # a Jinja file replacing the model's chat template
    tool_call_parser: str = "auto"  # router/tool_parsers/; auto: from the chat template
    reasoning_parser: str = "auto"  # router/reasoning/; auto: qwen3 if the template thinks
    cache_dir: str | None = None
    # Router processes serving the port (SO_REUSEPORT, router/serve.py). Each one follows the
    # registry and the KV-event stream itself, so nothing here is shared between them.
    processes: int = 1
    # Set by the supervisor for each of them: which one this is, and the private directory
    # where they answer each other's /metrics (router/sibling_metrics.py). None: one process.
    process_index: int = 0
    sibling_dir: str | None = None
    # Backpressure (router/admission.py): requests this router process has in flight (routed,
    # not yet finished) per eligible decode worker; beyond it, 429 + Retry-After. 0: unbounded.
    max_in_flight_per_worker: int = 256
    overload_retry_after_s: int = 1
    # Authenticates the router to the workers (gRPC token) and to Redis (its read-only user),
    # and verifies the workers' signed registry records. None only with --insecure.
    cluster_secret: ClusterSecret | None = None
    # Per API key (router/rate_limit.py): requests/s and tokens/s, 429 + Retry-After beyond.
    rate_limits: RateLimits = field(default_factory=RateLimits)

    @property
    def requires_auth(self) -> bool:
        return bool(self.api_keys)
