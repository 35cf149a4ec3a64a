"""One /metrics for several router processes: expositions merged (counters and histograms
summed, gauges per process), and siblings asked over real unix sockets, with a sibling that is
gone or silent left out of the scrape rather than holding it up."""

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router import sibling_metrics
from router.metrics import RouterMetrics
from router.metrics_merge import PROCESS_LABEL, PROCESSES_METRIC, merge_expositions
from router.sibling_metrics import SiblingMetrics


def _metrics(ok: int, prompt_tokens: int, ttfts: list[float], blocks: int) -> RouterMetrics:
    m = RouterMetrics()
    m.requests.labels("kv_aware", "ok").inc(ok)
    m.prompt_tokens.inc(prompt_tokens)
    for t in ttfts:
        m.ttft.observe(t)
    m.index_blocks.set(blocks)
    return m


def _samples(text: bytes) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_counters_and_histograms_add_up_and_gauges_stay_per_process():
    a = _metrics(ok=3, prompt_tokens=100, ttfts=[0.004, 0.2], blocks=7)
    b = _metrics(ok=5, prompt_tokens=40, ttfts=[0.2, 3.0, 50.0], blocks=9)
    merged = _samples(merge_expositions({0: generate_latest(a.registry).decode(),
                                         1: generate_latest(b.registry).decode()}))
    ok = ("pdserve_router_requests_total", (("outcome", "ok"), ("policy", "kv_aware")))
    assert merged[ok] == 8
    assert merged[("pdserve_router_prompt_tokens_total", ())] == 140
    assert merged[("pdserve_router_ttft_seconds_count", ())] == 5
    assert abs(merged[("pdserve_router_ttft_seconds_sum", ())] - 53.404) < 1e-9
    buckets = {dict(k[1])["le"]: v for k, v in merged.items()
               if k[0] == "pdserve_router_ttft_seconds_bucket"}
    assert buckets["0.005"] == 1 and buckets["0.25"] == 3 and buckets["5.0"] == 4
    assert buckets["+Inf"] == 5
    assert merged[("pdserve_router_index_blocks", ((PROCESS_LABEL, "0"),))] == 7
    assert merged[("pdserve_router_index_blocks", ((PROCESS_LABEL, "1"),))] == 9
    assert ("pdserve_router_index_blocks", ()) not in merged
    assert merged[(PROCESSES_METRIC, ())] == 2
    created = [v for k, v in merged.items() if k[0] == "pdserve_router_requests_created"]
    assert len(created) == 1  # the earliest of the two, not their sum
    assert created[0] < 2e9


def test_an_exposition_that_does_not_parse_is_left_out():
    a = _metrics(ok=2, prompt_tokens=10, ttfts=[], blocks=1)
    merged = _samples(merge_expositions({0: generate_latest(a.registry).decode(),
                                         1: "pdserve_router_requests_total{oops 3\n"}))
    assert merged[(PROCESSES_METRIC, ())] == 1
    assert merged[("pdserve_router_requests_total",
                   (("outcome", "ok"), ("policy", "kv_aware")))] == 2


def test_siblings_answer_over_unix_sockets_and_a_silent_one_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(sibling_metrics, "SIBLING_TIMEOUT_S", 0.3)
    renders = {i: generate_latest(_metrics(ok=i + 1, prompt_tokens=0, ttfts=[],
                                           blocks=0).registry) for i in range(3)}

    async def run():
        siblings = [SiblingMetrics(str(tmp_path), i, 3, lambda i=i: renders[i])
                    for i in range(3)]
        for s in siblings:
            await s.start()
        everyone = await siblings[1].gather()
        assert sorted(everyone) == [0, 1, 2]
        assert everyone[2] == renders[2].decode()

        await siblings[2].close()  # a process that is gone (restarting): no socket
        assert not sibling_metrics.socket_path(str(tmp_path), 2).exists()
        silent = await asyncio.start_unix_server(  # one that accepts and never answers
            lambda r, w: asyncio.sleep(10),
            path=str(sibling_metrics.socket_path(str(tmp_path), 0)))
        started = asyncio.get_running_loop().time()
        found = await siblings[1].gather()
        assert sorted(found) == [1]
        assert asyncio.get_running_loop().time() - started < 2.0
        silent.close()
        for s in siblings[:2]:
            await s.close()
        merged = _samples(merge_expositions(found))
        assert merged[(PROCESSES_METRIC, ())] == 1

    asyncio.run(run())
