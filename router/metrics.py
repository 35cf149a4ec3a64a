"""The router's Prometheus metrics (own registry, served at /metrics). Those without labels
that every request or token updates are router/loop_metrics.py's (no lock per update)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from router.loop_metrics import LoopCounter, LoopHistogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttft = LoopHistogram("pdserve_router_ttft_seconds", "Time to first token", r,
                                  _LATENCY_BUCKETS)
        self.itl = LoopHistogram("pdserve_router_itl_seconds", "Inter-token latency", r,
                                 _ITL_BUCKETS)
        self.e2e = LoopHistogram("pdserve_router_e2e_seconds",
                                 "End-to-end latency of requests answered in full (outcome ok)",
                                 r, _LATENCY_BUCKETS)
        # outcome: ok (the finish reason reached the client), cancelled (the client left
        # before it), rejected (bad request, no workers), error (every attempt failed).
        self.requests = Counter("pdserve_router_requests", "Requests by policy and outcome",
                                ["policy", "outcome"], registry=r)
        self.routing_seconds = LoopHistogram(
            "pdserve_router_routing_decision_seconds", "Time to choose workers", r,
            (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2))
        self.prompt_tokens = LoopCounter("pdserve_router_prompt_tokens", "Prompt tokens routed",
                                         r)
        self.cached_tokens = LoopCounter("pdserve_router_cached_tokens",
                                         "Prompt tokens the prefill worker served from cache", r)
        self.predicted_cached_tokens = LoopCounter(
            "pdserve_router_predicted_cached_tokens",
            "Cached tokens the prefix index predicted for the chosen worker", r)
        self.prediction_error = LoopHistogram(
            "pdserve_router_cache_prediction_error_tokens",
            "Predicted minus realised cached tokens per remote prefill", r,
            (-4096, -1024, -256, -64, -16, -1, 0, 1, 16, 64, 256, 1024, 4096))
        self.prefix_hit_ratio = Gauge("pdserve_router_prefix_hit_ratio",
                                      "Cached / prompt tokens since start", registry=r)
        self.index_accuracy = Gauge(
            "pdserve_router_index_accuracy",
            "Share of recent remote prefills whose cache hit the index predicted exactly",
            registry=r)
        self.retries = Counter("pdserve_router_prefill_retries", "Prefill retries", registry=r)
        self.migrations = Counter("pdserve_router_decode_migrations",
                                  "Decode streams moved to another worker mid-stream",
                                  registry=r)
        self.local_prefills = Counter("pdserve_router_local_prefills",
                                      "Requests prefilled on the decode worker", ["reason"],
                                      registry=r)
        # Tokens / batches is how many requests' tokens one decode output message carries.
        self.decode_output_batches = LoopCounter(
            "pdserve_router_decode_output_batches",
            "Output batches read from decode workers (one per engine step and router)", r)
        self.decode_output_tokens = LoopCounter("pdserve_router_decode_output_tokens",
                                                "Tokens those batches carried", r)
        self.index_blocks = Gauge("pdserve_router_index_blocks", "Blocks in the prefix index",
                                  registry=r)
        self.workers = Gauge("pdserve_router_workers", "Live workers by role", ["role"],
                             registry=r)
        # reason: overloaded (429, every eligible decode worker full: router/admission.py),
        # no_workers (503), rate_limit_requests / rate_limit_tokens (429, an API key over its
        # limits: router/rate_limit.py). The _total suffix is prometheus_client's.
        self.rejected = Counter("pdserve_router_rejected", "Requests refused before routing",
                                ["reason"], registry=r)
