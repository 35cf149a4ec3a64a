"""The router's registry against a real Redis that stalls: nobody is evicted for a stall nobody
could heartbeat through, a worker that really died still leaves, and a router in front of real
workers stays ready and answers every request during and after a 10 s stall.

The stall: every client reaches Redis (``redis-server`` in CI, fakeredis on a bare machine)
through a TCP proxy of its own, and the test stops all the proxies from forwarding. Redis's
clock runs on, so every worker record's TTL runs out meanwhile, as under ``DEBUG SLEEP`` (which
Redis 7 disables by default and fakeredis lacks). When the stall ends, which client Redis
serves first is a race; the test fixes the order that hurt before: the router's link resumes
first and the workers' heartbeats arrive a second later, so the router reads a registry in
which every record has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import threading
import time
import uuid
from collections import deque

import httpx
import pytest

from common.redis_acl import ROUTER, WORKER, url_for_role
from common.redis_schema import Keys, WorkerRecord
from router.registry import RegistryView
from tests.cluster_helpers import RedisServer, RouterProcess, WorkerProcess, cluster_secret
from worker.presence import WorkerPresence


class _PausableProxy:
    """Forwards TCP to a local port; while paused, bytes wait in the proxy (not dropped)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._running = threading.Event()
        self._running.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                self._running.wait()
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._running.set()
        self._listener.close()


class StallableRedis:
    def __init__(self):
        self.server = RedisServer()
        self.kind = "redis-server" if self.server.process is not None else "fakeredis"
        self.links: list[_PausableProxy] = []

    def link(self) -> str:
        """A Redis URL through a link of its own; links resume in the order they were made."""
        proxy = _PausableProxy(self.server.port)
        self.links.append(proxy)
        return f"redis://127.0.0.1:{proxy.port}/0"

    @contextlib.contextmanager
    def stalled(self, resume_gap_s: float = 1.0):
        for link in self.links:
            link.pause()
        try:
            yield
        finally:
            for i, link in enumerate(self.links):
                if i:
                    time.sleep(resume_gap_s)
                link.resume()

    def stop(self) -> None:
        for link in self.links:
            link.close()
        self.server.stop()


@pytest.fixture
def stallable_redis():
    redis = StallableRedis()
    yield redis
    redis.stop()


def _as(role: str, url: str) -> str:
    """``url`` with the credentials of a cluster role (the session's Redis is locked)."""
    return url_for_role(url, cluster_secret(), role)


def _record(i: int, clock_offset_s: float = 0.0):
    base = WorkerRecord(worker_id=f"w{i}", role="decode" if i % 2 else "prefill",
                        address=f"127.0.0.1:{10000 + i}", model="m", compat_digest="c",
                        tp_size=1, block_size=16, num_blocks=100, max_model_len=1024)
    # The worker's own clock, as the real runtime writes it into every heartbeat.
    return lambda: WorkerRecord(**{**base.__dict__, "heartbeat_at": time.time() + clock_offset_s})


async def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_stall_longer_than_the_ttl_evicts_nobody_but_a_dead_worker_still_leaves(
        stallable_redis):
    ttl_s = 3.0

    async def scenario():
        import redis.asyncio as aioredis

        keys = Keys(f"stall-{uuid.uuid4().hex[:8]}:")
        router_link, workers_link = stallable_redis.link(), stallable_redis.link()
        presences = [WorkerPresence(_as(WORKER, workers_link), keys, _record(i), deque(),
                                    heartbeat_s=0.25, ttl_s=ttl_s) for i in range(4)]
        for p in presences:
            await p.start()
        left: list[str] = []
        client = aioredis.from_url(_as(ROUTER, router_link), socket_timeout=0.5,
                                   socket_connect_timeout=0.5)
        registry = RegistryView(client, keys, ttl_s=ttl_s, poll_s=0.1, on_leave=left.append)
        sizes: list[int] = []

        async def watch():
            while True:
                await registry.refresh()
                sizes.append(len(registry.live("decode")) + len(registry.live("prefill")))
                await asyncio.sleep(registry.poll_s)

        watcher = asyncio.create_task(watch())
        try:
            await _until(lambda: len(registry.workers) == 4, 10, "4 workers to register")
            sizes.clear()
            router_side, workers_side = stallable_redis.links
            router_side.pause()
            workers_side.pause()
            # w3 dies during the stall (no deregistration: a crash).
            await presences[3].stop(deregister=False)
            await asyncio.sleep(2 * ttl_s)  # every record's TTL runs out meanwhile
            assert registry.redis_ok is False  # the router did see the outage
            router_side.resume()
            await asyncio.sleep(1.0)  # the router reads the expired registry first
            workers_side.resume()
            await _until(lambda: registry.redis_ok, 10, "the router to read Redis again")
            # The dead worker leaves once Redis has served a whole TTL without its heartbeat.
            await _until(lambda: "w3" in left, 4 * ttl_s, "the dead worker to be evicted")
            await asyncio.sleep(ttl_s)  # and the live ones stay past the grace period too
            assert left == ["w3"], left
            assert sorted(registry.workers) == ["w0", "w1", "w2"]
            assert min(sizes) >= 3, "the view shrank below the live workers during the stall"
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            for p in presences[:3]:
                await p.stop()
            await client.aclose()

    asyncio.run(scenario())


def test_liveness_is_judged_by_redis_not_by_the_clocks_of_router_and_worker(
        stallable_redis):
    async def scenario():
        import redis.asyncio as aioredis

        keys = Keys(f"skew-{uuid.uuid4().hex[:8]}:")
        # A worker host whose clock is an hour behind the router's.
        presence = WorkerPresence(_as(WORKER, stallable_redis.server.url), keys,
                                  _record(1, clock_offset_s=-3600), deque(), heartbeat_s=0.25,
                                  ttl_s=2.0)
        await presence.start()
        client = aioredis.from_url(_as(ROUTER, stallable_redis.server.url))
        registry = RegistryView(client, keys, ttl_s=2.0)
        try:
            await _until(lambda: presence._connected, 10, "the first heartbeat")
            await registry.refresh()
            assert list(registry.workers) == ["w1"]
            await presence.stop(deregister=False)  # crashed: only its TTL can tell
            deadline = time.monotonic() + 10
            while registry.workers and time.monotonic() < deadline:
                await registry.refresh()
                await asyncio.sleep(0.1)
            assert not registry.workers
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.skipif(importlib.util.find_spec("nixl_cu12") is None,
                    reason="needs the nixl extra")
def test_router_stays_ready_and_serves_through_a_redis_stall(stallable_redis, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    router_link, workers_link = stallable_redis.link(), stallable_redis.link()
    prefill = WorkerProcess("prefill", model, workers_link)
    decodes = [WorkerProcess("decode", model, workers_link) for _ in range(2)]
    router = RouterProcess(router_link, model, wait_for=(1, 2))
    probes: list[tuple[str, int, int]] = []  # (phase, /ready status, decode workers)
    phase = "before"
    stop = threading.Event()

    def probe():
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                ready = http.get(f"{router.url}/ready").status_code
                health = http.get(f"{router.url}/health").json()
                probes.append((phase, ready, health["decode_workers"]))
                time.sleep(0.05)

    def ask(http: httpx.Client) -> int:
        return http.post(f"{router.url}/v1/completions", json={
            "model": demo_model_dir.name, "prompt": "The capital of France is",
            "max_tokens": 4, "temperature": 0}).status_code

    prober = threading.Thread(target=probe, daemon=True)
    statuses: list[tuple[str, int]] = []
    try:
        with httpx.Client(timeout=60) as http:
            assert ask(http) == 200
            prober.start()
            with stallable_redis.stalled():
                phase = "stalled"
                end = time.monotonic() + 10.0  # twice the router's 5 s registry TTL
                while time.monotonic() < end:
                    statuses.append((phase, ask(http)))
                    time.sleep(0.2)
            phase = "after"
            end = time.monotonic() + 8.0  # past the grace period and the workers' return
            while time.monotonic() < end:
                statuses.append((phase, ask(http)))
                time.sleep(0.2)
            health = http.get(f"{router.url}/health").json()
    finally:
        stop.set()
        prober.join(timeout=10)
        router.stop()
        for w in (prefill, *decodes):
            w.stop()
    assert {p for p, _ in statuses} == {"stalled", "after"}
    assert [s for s in statuses if s[1] != 200] == [], stallable_redis.kind
    assert {p for p, _, _ in probes} >= {"stalled", "after"}
    assert [p for p in probes if p[1] != 200 or p[2] < 2] == [], stallable_redis.kind
    assert health["redis"] is True and health["decode_workers"] == 2
