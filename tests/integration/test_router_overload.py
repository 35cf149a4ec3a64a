"""Backpressure at the router, with real workers on the demo model: with one request allowed in
flight per decode worker, a second one while the first streams gets 429 + Retry-After in
OpenAI's error shape; once the first ends, requests are served again, and nothing stayed
counted or held (admission slots, the router's load counters, the prefill worker's leases).
With no decode worker at all: 503 + Retry-After."""

import json
import time
import uuid

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

STORY = ("Once upon a time, in a harbour town famous for its bakeries, a young apprentice "
         "named Mira discovered a map hidden inside a loaf of bread. The map showed")


def _settled(url: str, deadline_s: float = 10.0) -> dict:
    """/v1/cluster once nothing is counted in flight and no lease is held (or the deadline)."""
    deadline = time.time() + deadline_s
    while True:
        view = httpx.get(f"{url}/v1/cluster", timeout=5).json()
        busy = view["admission"]["in_flight"] or any(
            w["router_decode_streams"] or w["router_prefill_tokens"] or w["held_leases"]
            for w in view["workers"])
        if not busy or time.time() > deadline:
            return view
        time.sleep(0.2)


def test_saturated_cluster_answers_429_then_recovers(redis_server, demo_model_dir):
    prefix = f"ov{uuid.uuid4().hex[:6]}:"
    model = ["--model", str(demo_model_dir), "--redis-prefix", prefix]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + [
        "--local-prefill-threshold", "8", "--max-in-flight-per-worker", "1",
        "--overload-retry-after-s", "3"], wait_for=(1, 1))
    try:
        name = httpx.get(f"{router.url}/v1/models").json()["data"][0]["id"]
        slow = {"model": name, "prompt": STORY, "max_tokens": 96, "temperature": 0,
                "ignore_eos": True, "stream": True}
        tokens = 0
        with httpx.Client(base_url=router.url, timeout=120) as first, \
                first.stream("POST", "/v1/completions", json=slow) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            for line in lines:  # until the first token: the request is surely in flight
                if line.startswith("data: {"):
                    tokens += 1
                    break
            refused = httpx.post(f"{router.url}/v1/chat/completions", timeout=30, json={
                "model": name, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4})
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "3"
            error = refused.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
            assert set(error) == {"message", "type", "param", "code"}
            client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=name, prompt="Hi", max_tokens=4)
            finish = None
            for line in lines:  # the first request is unaffected and runs to its end
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    tokens += 1
                    finish = choice["finish_reason"] or finish
        assert (tokens, finish) == (96, "length")
        deadline = time.time() + 10
        while True:  # its slot is released as its response ends
            try:
                r = client.completions.create(model=name, prompt=STORY, max_tokens=8,
                                              temperature=0)
                break
            except openai.RateLimitError:
                assert time.time() < deadline, "still refused after the first request ended"
                time.sleep(0.1)
        assert r.choices[0].finish_reason == "length"
        view = _settled(router.url)
        assert view["admission"]["in_flight"] == 0
        assert view["admission"]["rejected"] == {"overloaded": 2}
        for w in view["workers"]:
            assert (w["router_decode_streams"], w["router_prefill_tokens"],
                    w["held_leases"]) == (0, 0, 0), w
        metrics = httpx.get(f"{router.url}/metrics").text
        assert 'pdserve_router_rejected_total{reason="overloaded"} 2.0' in metrics
        assert any("refused 1 request(s) with 429" in line for line in router.log_lines)
    finally:
        router.stop()
        prefill.stop()
        decode.stop()


def test_no_decode_worker_answers_503_with_retry_after(redis_server):
    router = RouterProcess(redis_server.url, ["--redis-prefix", f"none{uuid.uuid4().hex[:6]}:"],
                           wait_for=(0, 0))
    try:
        r = httpx.post(f"{router.url}/v1/completions", timeout=30,
                       json={"model": "demo", "prompt": "Hi", "max_tokens": 4})
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "no_workers"
        assert 'pdserve_router_rejected_total{reason="no_workers"} 1.0' in httpx.get(
            f"{router.url}/metrics").text
    finally:
        router.stop()
