"""One Prometheus exposition for several router processes: what each process's registry says,
merged the way a scrape of a single router would read it.

With ``--workers N`` every process keeps its own metrics (router/metrics.py), and a scrape of the
shared port reaches whichever process takes the connection. Scraping one process at a time would
make every counter jump between processes' values, which ``rate()`` reads as resets. So the
process that takes the scrape asks its siblings for their expositions
(router/sibling_metrics.py) and merges them here:

- counters, histograms and summaries: summed per series (same name, same labels), since
  requests, tokens and latency observations add up across processes; their ``_created``
  series (which the text format writes as gauges of their own) take the earliest;
- gauges (and any other type): one series per process with a ``router_process`` label, since a
  process's view (its index size, its live workers, its hit ratio) does not add up;
- ``pdserve_router_metrics_processes``: how many processes' metrics the scrape holds, so a
  sibling that did not answer in time shows as a number below ``--workers``.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SUMMED = {"counter", "histogram", "summary"}
PROCESS_LABEL = "router_process"
PROCESSES_METRIC = "pdserve_router_metrics_processes"
log = logging.getLogger(__name__)


def merge_expositions(texts: dict[int, str]) -> bytes:
    """``texts``: process index -> that process's exposition (text format 0.0.4)."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple, Sample]] = {}
    included = 0
    for index in sorted(texts):
        try:
            parsed = list(text_string_to_metric_families(texts[index]))
        except ValueError as e:  # not ours to serve half-read; the count shows it missing
            log.warning("router process %d sent metrics that do not parse: %s", index, e)
            continue
        included += 1
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                sums[family.name] = {}
            if family.type in SUMMED or family.name.endswith("_created"):
                series = sums[family.name]
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    before = series.get(key)
                    if before is None:
                        series[key] = s
                    elif s.name.endswith("_created"):
                        series[key] = s._replace(value=min(before.value, s.value))
                    else:
                        series[key] = s._replace(value=before.value + s.value)
            else:
                merged.samples.extend(
                    s._replace(labels={**s.labels, PROCESS_LABEL: str(index)})
                    for s in family.samples)
    for name, series in sums.items():
        families[name].samples.extend(series.values())
    processes = Metric(PROCESSES_METRIC, "Router processes whose metrics this scrape holds",
                       "gauge")
    processes.add_sample(PROCESSES_METRIC, {}, float(included))
    families[PROCESSES_METRIC] = processes
    return generate_latest(_Fixed(list(families.values())))


class _Fixed(CollectorRegistry):
    """A registry that yields the given families as they are."""

    def __init__(self, families: list[Metric]):
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self):
        yield from self._families
