"""Prometheus metrics of a worker, read from the engine's latest stats snapshot at scrape time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from engine.llm_engine import EngineStats


class WorkerCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None], labels: dict[str, str]):
        self._stats = stats
        self._labels = labels

    def collect(self):
        s = self._stats()
        if s is None:
            return
        names, values = list(self._labels), list(self._labels.values())

        def gauge(name, doc, value):
            m = GaugeMetricFamily(f"pdserve_worker_{name}", doc, labels=names)
            m.add_metric(values, value)
            return m

        def counter(name, doc, value):
            m = CounterMetricFamily(f"pdserve_worker_{name}", doc, labels=names)
            m.add_metric(values, value)
            return m

        yield gauge("queue_depth", "Requests waiting to be scheduled", s.num_waiting)
        yield gauge("running", "Requests in the running batch", s.num_running)
        yield gauge("kv_usage_ratio", "Share of KV blocks not free", s.kv_usage)
        yield gauge("kv_blocks", "KV blocks in the cache", s.num_blocks)
        yield gauge("kv_cached_blocks", "Blocks in the prefix cache", s.num_cached_blocks)
        yield counter("prefix_hit_tokens", "Prompt tokens served from the prefix cache",
                      s.prefix_hit_tokens)
        yield counter("prefix_query_tokens", "Prompt tokens looked up in the prefix cache",
                      s.prefix_query_tokens)
        yield counter("preemptions", "Requests preempted for lack of KV blocks",
                      s.num_preemptions)
        t = s.transfer
        if t is not None:
            yield gauge("kv_leases_held", "Requests whose blocks are held for a receiver",
                        t.num_held)
            yield gauge("kv_pulls_in_flight", "KV pulls in progress", t.num_pulling)
            yield counter("kv_leases_released", "Leases released by receivers",
                          t.leases_released)
            yield counter("kv_leases_expired", "Leases that expired unreleased",
                          t.leases_expired)
            yield counter("kv_transfer_bytes", "Bytes pulled from KV owners", t.bytes_pulled)
            yield counter("kv_transfer_seconds", "Seconds spent in KV pulls", t.seconds_pulling)
            yield counter("kv_pulls_failed", "KV pulls that failed", t.pulls_failed)


def make_registry(stats: Callable[[], EngineStats | None], labels: dict[str, str]
                  ) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(stats, labels))
    return registry
