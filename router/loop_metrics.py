"""Prometheus metrics for the router's per-token path: plain Python numbers, updated only by
the event loop's thread, exported when /metrics is scraped.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` check the metric's state and take
a lock on every call. The router calls them for every output batch it reads and every token
event it hands on (two counters a batch, the inter-token histogram an event: ~30 calls per
16-token streamed request), from its event loop only, so it needs neither. These keep what a
scrape shows the same (a ``Counter`` exports ``<name>_total``, a histogram its cumulative
``_bucket`` series, ``_count`` and, when no bucket is negative, ``_sum``), without the
per-call work; they leave out the ``_created`` samples, which nothing of ours reads.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample


class LoopCounter:
    """A counter without labels: ``inc(amount)`` adds to a plain int."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int | float = 1) -> None:
        self.value += amount

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value)
        yield family


class LoopHistogram:
    """A histogram without labels over fixed bucket bounds: ``observe`` counts into the
    first bucket whose bound is at least the value, as Prometheus's ``le`` reads."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry,
                 buckets: Sequence[float]):
        self.name, self.documentation = name, documentation
        self.bounds = sorted(float(b) for b in buckets if b != float("inf"))
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self):
        cumulative, total = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += count
            cumulative.append((_le(bound), total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, sum_value=self.sum)
        if self.bounds and self.bounds[0] < 0:  # as Histogram: a count, but no sum (the
            # family leaves out both when a bucket is negative)
            family.samples.append(Sample(self.name + "_count", {}, total, None))
        yield family


def _le(bound: float) -> str:
    """The ``le`` label as prometheus_client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
