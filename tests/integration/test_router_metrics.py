"""What the router counts and logs, checked against what clients saw: streamed and non-streamed
requests that got their finish reason count as outcome="ok" (a stream used to count as
"cancelled", since the SSE consumer closes the generator right after the last event), a client
that leaves mid-stream counts as "cancelled", and each request leaves exactly one INFO line
with its workers, token counts, TTFT, end-to-end time and outcome (none at --log-level warning).

Real router and workers on the demo model, real Redis, the official openai client.
"""

from __future__ import annotations

import importlib.util
import re
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nixl_cu12") is None,
                                reason="needs the nixl extra")
openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = ("In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship "
         "that passed. One stormy night he wrote:")


@pytest.fixture(scope="module")
def cluster(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefix = ["--redis-prefix", "metrics-test:"]
    prefill = WorkerProcess("prefill", model + prefix, redis_server.url)
    decode = WorkerProcess("decode", model + prefix, redis_server.url)
    router = RouterProcess(redis_server.url, model + prefix + ["--local-prefill-threshold", "8"],
                           wait_for=(1, 1))
    yield router, prefill, decode, model + prefix
    router.stop()
    for w in (prefill, decode):
        w.stop()


def samples(router_url: str, name: str) -> dict[tuple, float]:
    """Values of one metric's samples, keyed by their sorted labels."""
    text = httpx.get(f"{router_url}/metrics").text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


def outcomes(router_url: str) -> dict[str, float]:
    return {dict(k)["outcome"]: v
            for k, v in samples(router_url, "pdserve_router_requests_total").items()}


def request_lines(router: RouterProcess, request_id: str, timeout_s: float = 30) -> list[str]:
    """The router's log lines about one request (waits for the log pump to catch up)."""
    deadline = time.time() + timeout_s
    while True:
        lines = [line for line in list(router.log_lines)
                 if "router.requests:" in line and f"request {request_id} " in line]
        if lines or time.time() > deadline:
            return lines
        time.sleep(0.1)


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_outcomes_and_one_log_line_per_request(cluster, demo_model_dir):
    router, prefill, decode, _ = cluster
    name = demo_model_dir.name
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    before = outcomes(router.url)
    seen = []  # (request id, prompt tokens, completion tokens)

    chunks = list(client.chat.completions.create(
        model=name, messages=QUESTION, temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and
            c.choices[0].finish_reason] in (["stop"], ["length"])
    seen.append((chunks[0].id, chunks[-1].usage.prompt_tokens,
                 chunks[-1].usage.completion_tokens))
    whole = client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                           max_tokens=16)
    seen.append((whole.id, whole.usage.prompt_tokens, whole.usage.completion_tokens))
    # One token: the prefill worker's first token already carries the finish reason.
    one = list(client.completions.create(model=name, prompt=STORY, max_tokens=1,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in one if c.choices and
            c.choices[0].finish_reason] == ["length"]
    seen.append((one[0].id, one[-1].usage.prompt_tokens, one[-1].usage.completion_tokens))
    single = client.completions.create(model=name, prompt=STORY, max_tokens=1, temperature=0)
    seen.append((single.id, single.usage.prompt_tokens, single.usage.completion_tokens))

    # A client that leaves mid-stream.
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{router.url}/v1/completions",
            json={"model": name, "prompt": STORY, "max_tokens": 400, "temperature": 0,
                  "ignore_eos": True, "stream": True}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        left_id = re.search(r'"id":\s*"([^"]+)"', first).group(1)
        for _ in range(3):
            next(lines)
    # The router notices the disconnect asynchronously: wait for its count to move.
    deadline = time.time() + 60
    while outcomes(router.url).get("cancelled", 0) <= before.get("cancelled", 0) and \
            time.time() < deadline:
        time.sleep(0.2)

    after = outcomes(router.url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    assert {k: v for k, v in delta.items() if v} == {"ok": 4, "cancelled": 1}

    for request_id, prompt_tokens, completion_tokens in seen:
        lines = request_lines(router, request_id)
        assert len(lines) == 1, (request_id, lines)
        f = fields(lines[0])
        assert f["outcome"] == "ok" and f["decode"] == decode.worker_id
        assert f["prefill"] in (prefill.worker_id, "local")
        assert int(f["prompt_tokens"]) == prompt_tokens
        assert int(f["output_tokens"]) == completion_tokens
        assert int(f["cached_tokens"]) >= 0
        assert float(f["ttft_ms"]) > 0 and float(f["e2e_ms"]) >= float(f["ttft_ms"])
    # The first prompt, cold and longer than --local-prefill-threshold 8, went remote (repeats
    # may be prefilled on the decode worker once the index predicts them cached: "local").
    assert fields(request_lines(router, seen[0][0])[0])["prefill"] == prefill.worker_id
    lines = request_lines(router, left_id)
    assert len(lines) == 1 and fields(lines[0])["outcome"] == "cancelled", lines
    assert 0 < int(fields(lines[0])["output_tokens"]) < 400


def test_latency_histograms_count_what_happened(cluster, demo_model_dir):
    router = cluster[0]
    name = demo_model_dir.name
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    count = lambda metric: sum(samples(router.url, metric).values())  # noqa: E731
    e2e, ttft = count("pdserve_router_e2e_seconds_count"), count("pdserve_router_ttft_seconds_count")
    ok = outcomes(router.url).get("ok", 0)
    list(client.completions.create(model=name, prompt=STORY, max_tokens=8, temperature=0,
                                   stream=True))
    client.completions.create(model=name, prompt=STORY, max_tokens=8, temperature=0)
    assert outcomes(router.url)["ok"] == ok + 2
    assert count("pdserve_router_e2e_seconds_count") == e2e + 2
    assert count("pdserve_router_ttft_seconds_count") == ttft + 2


def test_log_level_warning_silences_the_request_lines(cluster, redis_server, demo_model_dir):
    _, _, _, args = cluster
    quiet = RouterProcess(redis_server.url, args + ["--log-level", "warning"], wait_for=(1, 1))
    try:
        client = openai.OpenAI(base_url=f"{quiet.url}/v1", api_key="x", max_retries=0)
        r = client.completions.create(model=demo_model_dir.name, prompt=STORY, max_tokens=4,
                                      temperature=0)
        assert r.choices[0].finish_reason == "length"
        assert outcomes(quiet.url) == {"ok": 1.0}  # the request did go through this router
    finally:
        quiet.stop()
    assert not [line for line in quiet.log_lines if "router.requests:" in line]
