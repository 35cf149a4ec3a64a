"""router/loop_metrics.py exports what prometheus_client's own Counter and Histogram export for
the same updates (less the ``_created`` samples), so scrapes and dashboards read it unchanged."""

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.loop_metrics import LoopCounter, LoopHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


@pytest.mark.parametrize("buckets", [(0.001, 0.0025, 0.01, 1, 2.56, 64),
                                     (-16, -1, 0, 0.001, 1, 64)])  # negative: no _sum
def test_loop_metrics_expose_what_prometheus_client_exposes(buckets):
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    h_theirs = Histogram("x_seconds", "A histogram.", registry=theirs, buckets=buckets)
    h_ours = LoopHistogram("x_seconds", "A histogram.", ours, buckets)
    c_theirs = Counter("y_tokens", "A counter.", registry=theirs)
    c_ours = LoopCounter("y_tokens", "A counter.", ours)
    rng = random.Random(0)
    values = [rng.choice(buckets) for _ in range(50)] + [rng.uniform(-40, 100) for _ in range(200)]
    for v in values:  # values on a bound land in that bound's bucket (le: less or equal)
        h_theirs.observe(v)
        h_ours.observe(v)
        c_theirs.inc(3)
        c_ours.inc(3)
    assert _exposition(ours) == _exposition(theirs)
    assert h_ours.counts[-1] > 0 and c_ours.value == 3 * len(values)
