"""The demo-model cluster several API test modules share (one per module: module scope): a
prefill and a decode worker, a router that prefills remotely from 8 uncached tokens, the
official openai client on it, and one offline engine on the same weights as the reference.
A module that defines its own ``cluster`` fixture uses that one instead."""

from __future__ import annotations

import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess


@pytest.fixture(scope="module")
def cluster(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    started = []
    try:  # whatever fails to start, nothing is left running
        started.append(WorkerProcess("prefill", model, redis_server.url))
        started.append(WorkerProcess("decode", model, redis_server.url))
        started.append(RouterProcess(redis_server.url, model + ["--local-prefill-threshold",
                                                                "8"], wait_for=(1, 1)))
        yield started[2], started[0], started[1]
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def client(cluster):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{cluster[0].url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(demo_model_dir):
    from engine import LLM

    with LLM(str(demo_model_dir), device="cpu") as llm:
        yield llm
