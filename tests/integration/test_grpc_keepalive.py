"""The router's keepalive pings and the workers' ping policy agree: a connection pinged while
idle, and during a call the worker takes long to answer, is never closed with GOAWAY
too_many_pings (seen as ``UNAVAILABLE: Too many pings`` on a prefill call).

Real gRPC over TCP, the router's ``WorkerClients``, a worker servicer over a real engine; both
sides built from ``proto/keepalive.py`` with a 1 s ping interval instead of 10 s (gRPC's client
sends at most one ping a second, whatever ``keepalive_time_ms`` says), so that more pings than
the strikes gRPC tolerates fit in a few seconds.
"""

import asyncio
import threading

import grpc
import pytest

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from prefill_worker.servicer import PrefillServicer
from proto import keepalive, pb, pb_grpc
from router.worker_clients import WorkerClients
from worker.config import WorkerConfig
from worker.state import WorkerState

PING_MS = 1000
PINGED_S = 6 * PING_MS / 1000  # 6 pings per phase; gRPC's default policy allows 2 strikes


async def ping_for_a_while(server_options) -> tuple[list, list]:
    """Idle pings, then pings during a call held open by a busy engine. Returns the channel's
    connectivity changes and the answers (or errors) of the calls."""
    engine = AsyncEngine(EngineConfig(model="random:tiny-llama", device="cpu", seed=3,
                                      kv_cache_memory_bytes=16 << 20))
    await engine.start()
    state = WorkerState(WorkerConfig(role="prefill", engine=engine.config, redis_url=None),
                        "keepalive-test")
    server = grpc.aio.server(options=server_options)
    pb_grpc.add_WorkerServicer_to_server(PrefillServicer(engine, state), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    clients = WorkerClients(keepalive_time_ms=PING_MS)
    changes, answers = [], []

    async def call(rpc, request):
        try:
            answers.append(await rpc(request, timeout=60))
        except grpc.aio.AioRpcError as e:
            answers.append(e)

    try:
        stub = clients.stub(address)
        await call(stub.Health, pb.HealthRequest())
        channel = clients.channel(address)

        async def watch():
            seen = channel.get_state()
            while True:
                await channel.wait_for_state_change(seen)
                seen = channel.get_state()
                changes.append(seen)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(PINGED_S)  # idle: only pings on the connection
        busy = threading.Event()
        blocked = asyncio.create_task(engine.call(lambda e: busy.wait(60)))
        stats = asyncio.create_task(call(stub.Stats, pb.StatsRequest()))  # waits on the engine
        await asyncio.sleep(PINGED_S)  # a call in flight, no data from the server
        busy.set()
        await blocked
        await stats
        await call(stub.Health, pb.HealthRequest())
        watcher.cancel()
    finally:
        await clients.close()
        await server.stop(None)
        engine.shutdown()
    return changes, answers


def test_pings_within_the_shared_policy_keep_the_connection():
    changes, answers = asyncio.run(ping_for_a_while(keepalive.server_options(PING_MS)))
    errors = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert errors == [] and len(answers) == 3
    assert answers[1].role == "prefill" and answers[2].ok
    assert changes == []  # the connection stayed READY: no GOAWAY, no reconnect


def test_the_same_pings_against_grpcs_default_policy_get_goaway():
    """The control: without the shared policy the server closes the connection, so the test
    above really exercises pings beyond what gRPC tolerates by default."""
    changes, answers = asyncio.run(ping_for_a_while([]))
    errors = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert changes or errors
    assert all(e.code() == grpc.StatusCode.UNAVAILABLE for e in errors)


@pytest.mark.parametrize("ping_ms", [PING_MS, keepalive.KEEPALIVE_TIME_MS])
def test_the_server_accepts_pings_at_least_as_often_as_the_client_sends(ping_ms):
    client = dict(keepalive.channel_options(ping_ms))
    server = dict(keepalive.server_options(ping_ms))
    assert server["grpc.http2.min_ping_interval_without_data_ms"] <= client[
        "grpc.keepalive_time_ms"]
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
