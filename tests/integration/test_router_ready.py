"""Liveness and readiness of a real router: /health answers 200 from the start, /ready only once a
request would be served (a decode worker alone is enough: it prefills locally), and 503 in the
OpenAI error shape, with the reason, before that and after the last decode worker leaves."""

from __future__ import annotations

import importlib.util
import time

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nixl_cu12") is None,
                                reason="needs the nixl extra")


def wait_for_status(url: str, status: int, timeout_s: float = 60) -> httpx.Response:
    deadline = time.time() + timeout_s
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == status or time.time() > deadline:
            return r
        time.sleep(0.1)


def test_ready_only_while_a_decode_worker_can_serve(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir), "--redis-prefix", "ready-test:"]
    router = RouterProcess(redis_server.url, model, wait_for=(0, 0))
    decode = None
    try:
        health = httpx.get(f"{router.url}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["ready"] is False
        r = httpx.get(f"{router.url}/ready")
        assert r.status_code == 503 and r.headers["retry-after"]
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "no decode worker" in error["message"]

        decode = WorkerProcess("decode", model, redis_server.url)
        r = wait_for_status(f"{router.url}/ready", 200)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ready", "prefill_workers": 0, "decode_workers": 1,
                            "prefill": "local"}
        answer = httpx.post(f"{router.url}/v1/completions", timeout=120, json={
            "model": demo_model_dir.name, "prompt": "The capital of France is",
            "max_tokens": 4, "temperature": 0})
        assert answer.status_code == 200, answer.text  # ready meant it: served, locally

        decode.stop()  # drains and deregisters
        r = wait_for_status(f"{router.url}/ready", 503)
        assert r.status_code == 503 and "no decode worker" in r.json()["error"]["message"]
        assert httpx.get(f"{router.url}/health").status_code == 200  # still alive
    finally:
        router.stop()
        if decode is not None:
            decode.stop()
