"""Per-key rate limits (issue 17), with real workers on the demo model and the openai client:
a key over its requests/s or tokens/s gets OpenAI's 429 with Retry-After before any work, the
other key is unaffected, the limited key is served again after waiting, and nothing stays
counted (admission slots, load counters, leases)."""

import time
import uuid

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")


MODEL_NAME = "smollm2-135m-instruct"  # the demo model's own name, which the router serves


@pytest.fixture(scope="module")
def workers(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir), "--redis-prefix", f"rl{uuid.uuid4().hex[:6]}:"]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    yield model
    for w in (prefill, decode):
        w.stop()


def _ask(url: str, key: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL_NAME, "prompt": "Count: one, two,",
                            "max_tokens": max_tokens, "temperature": 0})


def test_requests_per_second_per_key(redis_server, workers):
    router = RouterProcess(redis_server.url, workers + [
        "--api-key", "key-a", "--api-key", "key-b", "--rate-limit-rps", "0.5",
        "--rate-limit-burst-s", "2"], wait_for=(1, 1))  # a burst of one request, then one per 2 s
    try:
        assert _ask(router.url, "key-a").status_code == 200
        refused = _ask(router.url, "key-a")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "requests/s" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert _ask(router.url, "key-b").status_code == 200  # another key has its own budget
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="key-a", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2)
        time.sleep(int(refused.headers["Retry-After"]) + 0.2)
        assert _ask(router.url, "key-a").status_code == 200  # served again after waiting
        view = httpx.get(f"{router.url}/v1/cluster", timeout=10,
                         headers={"Authorization": "Bearer key-a"}).json()
        assert view["admission"]["in_flight"] == 0
        assert all(not w["router_decode_streams"] and not w["held_leases"]
                   for w in view["workers"])
        metrics = httpx.get(f"{router.url}/metrics").text
        assert 'pdserve_router_rejected_total{reason="rate_limit_requests"} 2.0' in metrics
    finally:
        router.stop()


def test_tokens_per_second_per_key(redis_server, workers):
    router = RouterProcess(redis_server.url, workers + [
        "--api-key", "key-a", "--rate-limit-tps", "20", "--rate-limit-burst-s", "1"],
        wait_for=(1, 1))
    try:
        # ~6 prompt tokens + 40 output tokens: the key ends about 26 tokens in debt ...
        first = _ask(router.url, "key-a", max_tokens=40)
        assert first.status_code == 200
        used = first.json()["usage"]["total_tokens"]
        refused = _ask(router.url, "key-a")
        assert refused.status_code == 429 and "tokens/s" in refused.json()["error"]["message"]
        # ... paid back at 20 tokens/s: Retry-After says about when.
        assert int(refused.headers["Retry-After"]) == pytest.approx((used - 20) / 20, abs=1.01)
        time.sleep(int(refused.headers["Retry-After"]) + 0.3)
        assert _ask(router.url, "key-a").status_code == 200
    finally:
        router.stop()
