"""Two router processes on one port (``pdserve router --workers 2``, SO_REUSEPORT) in front of
real workers on the demo model: client connections spread across both processes, each process
fills its own prefix index from the KV-event stream, /metrics from either counts both, and SIGTERM
leaves no process behind."""

import os
import time
import uuid

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.metrics_merge import PROCESSES_METRIC
from router.process_header import HEADER
from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

STORY = ("In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship "
         "that passed. One stormy night he wrote about")


def _served_by(url: str, path: str, pid: int, deadline_s: float = 20.0) -> httpx.Response:
    """GET ``path`` answered by the router process ``pid`` (new connections until it is)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        r = httpx.get(f"{url}{path}", timeout=10)  # a new connection each time
        if int(r.headers[HEADER]) == pid:
            return r
    raise AssertionError(f"router pid {pid} never answered {path}")


def _cluster_view(url: str, pid: int) -> dict:
    """/v1/cluster as the router process ``pid`` sees it."""
    view = _served_by(url, "/v1/cluster", pid).json()
    assert view["router"]["pid"] == pid
    return view


def _ok_requests(metrics_text: str) -> tuple[float, float]:
    """(requests with outcome ok, processes the scrape holds) in a /metrics body."""
    samples = [s for f in text_string_to_metric_families(metrics_text) for s in f.samples]
    ok = sum(s.value for s in samples
             if s.name == "pdserve_router_requests_total" and s.labels["outcome"] == "ok")
    processes = next(s.value for s in samples if s.name == PROCESSES_METRIC)
    return ok, processes


def test_two_router_processes_share_a_port(redis_server, demo_model_dir):
    prefix = f"mr{uuid.uuid4().hex[:6]}:"
    model = ["--model", str(demo_model_dir), "--redis-prefix", prefix]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "8"],
                           wait_for=(1, 1), processes=2)
    children = psutil.Process(router.process.pid).children(recursive=True)
    try:
        assert len(router.pids) == 2
        assert router.pids <= {c.pid for c in children}
        name = httpx.get(f"{router.url}/v1/models").json()["data"][0]["id"]
        served_by: dict[int, int] = {}
        deadline = time.time() + 120
        i = 0
        while len(served_by) < 2 and time.time() < deadline:
            with httpx.Client(base_url=router.url, timeout=120) as client:  # a new connection
                r = client.post("/v1/completions", json={
                    "model": name, "prompt": f"{STORY} {i}", "max_tokens": 4,
                    "temperature": 0})
            assert r.status_code == 200, r.text
            pid = int(r.headers[HEADER])
            served_by[pid] = served_by.get(pid, 0) + 1
            i += 1
        assert set(served_by) == router.pids, served_by
        # Each process follows the KV-event stream itself: both indexes hold the prompts' blocks,
        # whichever process routed them.
        for pid in router.pids:
            deadline = time.time() + 10
            while (view := _cluster_view(router.url, pid))["index"]["blocks"] == 0:
                assert time.time() < deadline, view
                time.sleep(0.2)
            assert view["router"]["processes"] == 2
            assert view["pools"] == {"prefill": 1, "decode": 1}
            assert view["admission"]["in_flight"] == 0
        # /metrics answers for both processes, whichever takes the scrape: the requests of
        # both add up, so a counter does not jump between processes' values.
        for pid in router.pids:
            ok, processes = _ok_requests(_served_by(router.url, "/metrics", pid).text)
            assert (ok, processes) == (i, 2), (pid, ok, processes, served_by)
    finally:
        router.stop()
        prefill.stop()
        decode.stop()
    assert router.process.returncode == 0, "".join(router.log_lines[-30:])
    time.sleep(0.2)
    left = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"router processes left behind: {left}"
    assert not any(os.path.exists(f"/proc/{pid}") for pid in router.pids)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{router.url}/health", timeout=2)
