"""Failures with real processes: a prefill worker dies mid-request, a decode worker dies
mid-stream, Redis goes away — clients still get complete, correct answers."""

import threading
import time

import httpx
import pytest

from engine import LLM, SamplingParams
from tests.cluster_helpers import RedisServer, RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

STORY = ("Once upon a time, in a harbour town famous for its bakeries, a young apprentice "
         "named Mira discovered a map hidden inside a loaf of bread. The map showed")


@pytest.fixture(scope="module")
def reference(demo_model_dir):
    with LLM(str(demo_model_dir), device="cpu") as llm:
        yield llm


def expected_text(reference, prompt, max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return reference.generate(prompt, params)[0].text


def test_prefill_worker_killed_mid_request(redis_server, demo_model_dir, reference):
    model = ["--model", str(demo_model_dir)]
    # Small prefill chunks make a long prompt take many steps, so the kill lands mid-prefill.
    prefill = WorkerProcess("prefill", model + ["--max-num-batched-tokens", "16"],
                            redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model, wait_for=(1, 1))
    try:
        prompt = (STORY + " ") * 24  # about 1000 tokens
        name = demo_model_dir.name
        result = {}

        def call():
            result["response"] = httpx.post(f"{router.url}/v1/completions", json={
                "model": name, "prompt": prompt, "max_tokens": 16, "temperature": 0,
                "ignore_eos": True}, timeout=120)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.6)
        prefill.kill()
        thread.join(timeout=120)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == expected_text(reference, prompt, 16)
        metrics = httpx.get(f"{router.url}/metrics").text
        assert "pdserve_router_prefill_retries_total 1.0" in metrics
    finally:
        router.stop()
        decode.stop()


def test_decode_worker_killed_mid_stream(redis_server, demo_model_dir, reference):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decodes = [WorkerProcess("decode", model, redis_server.url) for _ in range(2)]
    router = RouterProcess(redis_server.url, model, wait_for=(1, 2))
    try:
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model=demo_model_dir.name, prompt=STORY,
                                           max_tokens=64, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        text, killed = "", None
        for i, chunk in enumerate(stream):
            text += chunk.choices[0].text if chunk.choices else ""
            if i == 8:
                serving = [w for w in httpx.get(f"{router.url}/v1/cluster").json()["workers"]
                           if w["router_decode_streams"] > 0]
                assert len(serving) == 1
                killed = next(d for d in decodes if d.worker_id == serving[0]["worker_id"])
                killed.kill()
        assert killed is not None
        assert text == expected_text(reference, STORY, 64)
        assert "pdserve_router_decode_migrations_total 1.0" in httpx.get(
            f"{router.url}/metrics").text
    finally:
        router.stop()
        prefill.stop()
        for d in decodes:
            d.stop()


def test_requests_keep_succeeding_without_redis(demo_model_dir, reference):
    redis = RedisServer()
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model, redis.url)
    decode = WorkerProcess("decode", model, redis.url)
    router = RouterProcess(redis.url, model, wait_for=(1, 1))
    try:
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        ask = lambda: client.completions.create(  # noqa: E731
            model=demo_model_dir.name, prompt=STORY, max_tokens=12, temperature=0,
            extra_body={"ignore_eos": True}).choices[0].text
        want = expected_text(reference, STORY, 12)
        assert ask() == want
        redis.stop()
        time.sleep(1.5)  # the router notices, keeps its last known registry
        for _ in range(3):
            assert ask() == want
        assert httpx.get(f"{router.url}/health").json()["redis"] is False
        redis = redis.restart()  # an empty Redis: workers re-register, the index rebuilds
        deadline = time.time() + 15
        while time.time() < deadline:
            view = httpx.get(f"{router.url}/v1/cluster").json()
            if view["redis"] and view["pools"] == {"prefill": 1, "decode": 1}:
                break
            time.sleep(0.2)
        assert view["redis"] and view["pools"] == {"prefill": 1, "decode": 1}
        assert ask() == want
    finally:
        router.stop()
        prefill.stop()
        decode.stop()
        redis.stop()
