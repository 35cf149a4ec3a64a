"""What every worker process does besides its role: load the engine, serve gRPC, keep its
Redis presence and metrics, drain and exit cleanly.

The prefill and decode packages each supply a servicer built on ``BaseServicer``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import grpc

from common.redis_schema import Keys, WorkerRecord
from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.llm_engine import EngineStats
from proto import API_VERSION, keepalive, pb, pb_grpc
from proto.convert import sampling_from_pb

log = logging.getLogger(__name__)

READY_MARKER = "PDSERVE_WORKER_READY"  # launchers read this line to learn the bound address
_MAX_MESSAGE_BYTES = 64 << 20  # long prompts as token ids


@dataclass(frozen=True)
class WorkerConfig:
    role: str  # prefill | decode | both
    engine: EngineConfig
    host: str = "127.0.0.1"  # interface to bind
    port: int = 0  # 0: any free port (printed on the ready line and in the registry)
    advertise_host: str | None = None  # address others dial; default: host, or hostname
    redis_url: str | None = "redis://127.0.0.1:6379/0"  # None: run without a registry
    redis_prefix: str = "pdserve:"
    metrics_port: int | None = 0  # 0: any free port; None: no metrics endpoint
    worker_id: str | None = None
    heartbeat_s: float = 1.0
    drain_timeout_s: float = 120.0


class WorkerState:
    def __init__(self, config: WorkerConfig, worker_id: str):
        self.config = config
        self.worker_id = worker_id
        self.draining = False
        self.in_flight = 0
        self.stats: EngineStats | None = None
        self.address = ""
        self.metrics_port = 0
        self.started_at = time.time()


class BaseServicer(pb_grpc.WorkerServicer):
    """Abort, Health and Stats for every role; guards shared by the role RPCs."""

    def __init__(self, engine: AsyncEngine, state: WorkerState):
        self.engine = engine
        self.state = state
        self.role = state.config.role

    async def check_request(self, request, context: grpc.aio.ServicerContext):
        """Refuse what no role can serve; return the request's validated sampling params."""
        api_version, request_id = request.api_version, request.request_id
        if api_version != API_VERSION:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"api_version {api_version} is not supported; this worker "
                                f"speaks {API_VERSION}")
        if self.state.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"worker {self.state.worker_id} is draining")
        if not request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        if not request.prompt_token_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
        try:
            return sampling_from_pb(request.sampling)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def Abort(self, request, context):
        found = await self.engine.call(lambda e: e.abort_request(request.request_id))
        return pb.AbortResponse(found=bool(found))

    async def Health(self, request, context):
        return pb.HealthResponse(ok=True, role=self.role, worker_id=self.state.worker_id,
                                 api_version=API_VERSION, draining=self.state.draining)

    async def Stats(self, request, context):
        s = await self.engine.stats()
        t = s.transfer
        return pb.StatsResponse(
            role=self.role, worker_id=self.state.worker_id,
            engine_id=self.engine.config.engine_id or "", num_waiting=s.num_waiting,
            num_running=s.num_running, num_blocks=s.num_blocks,
            num_free_blocks=s.num_free_blocks, num_cached_blocks=s.num_cached_blocks,
            kv_usage=s.kv_usage, prefix_hit_tokens=s.prefix_hit_tokens,
            prefix_query_tokens=s.prefix_query_tokens,
            num_held_leases=t.num_held if t else 0, num_pulling=t.num_pulling if t else 0,
            leases_released=t.leases_released if t else 0,
            leases_expired=t.leases_expired if t else 0, pulls_ok=t.pulls_ok if t else 0,
            pulls_failed=t.pulls_failed if t else 0, bytes_pulled=t.bytes_pulled if t else 0,
            seconds_pulling=t.seconds_pulling if t else 0.0, num_preemptions=s.num_preemptions,
            num_blocks_in_use=s.num_blocks - s.num_free_blocks,
        )


class InFlight:
    """Counts a request as in flight for draining."""

    def __init__(self, state: WorkerState):
        self.state = state

    def __enter__(self):
        self.state.in_flight += 1

    def __exit__(self, *exc):
        self.state.in_flight -= 1


def _record(state: WorkerState, engine: AsyncEngine) -> WorkerRecord:
    cfg = state.config
    eng = engine.engine
    s = state.stats
    return WorkerRecord(
        worker_id=state.worker_id, role=cfg.role, address=state.address,
        model=eng.source.name, compat_digest=eng.runner.kv_compat(eng.source).digest,
        tp_size=cfg.engine.tensor_parallel_size, block_size=cfg.engine.block_size,
        num_blocks=eng.pool.num_blocks,
        num_free_blocks=s.num_free_blocks if s else eng.pool.num_blocks,
        kv_usage=s.kv_usage if s else 0.0, num_waiting=s.num_waiting if s else 0,
        num_running=s.num_running if s else 0,
        num_held_leases=s.transfer.num_held if s and s.transfer else 0,
        max_model_len=eng.max_model_len, draining=state.draining,
        metrics_port=state.metrics_port, engine_id=cfg.engine.engine_id or "",
        api_version=API_VERSION, started_at=state.started_at, heartbeat_at=time.time(),
        pid=os.getpid(),
    )


async def run_worker(config: WorkerConfig, servicer_cls: type[BaseServicer]) -> None:
    worker_id = config.worker_id or f"{config.role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    engine_cfg = config.engine
    if engine_cfg.engine_id is None:
        from dataclasses import replace

        engine_cfg = replace(engine_cfg, engine_id=f"{worker_id}-{uuid.uuid4().hex[:6]}")
        config = replace(config, engine=engine_cfg)
    state = WorkerState(config, worker_id)
    engine = AsyncEngine(engine_cfg)
    log.info("loading %s for %s", engine_cfg.model, worker_id)
    await engine.start()

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                                      *keepalive.server_options()])  # the router's pings
    pb_grpc.add_WorkerServicer_to_server(servicer_cls(engine, state), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    host = config.advertise_host or (config.host if config.host not in ("0.0.0.0", "::")
                                     else socket.gethostname())
    state.address = f"{host}:{port}"

    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        from worker.metrics import make_registry

        registry = make_registry(lambda: state.stats, {"worker_id": worker_id,
                                                       "role": config.role})
        http_server, _ = start_http_server(config.metrics_port, addr=config.host,
                                           registry=registry)
        state.metrics_port = http_server.server_port

    state.stats = await engine.stats()
    presence = None
    if config.redis_url:
        from worker.presence import WorkerPresence

        presence = WorkerPresence(config.redis_url, Keys(config.redis_prefix),
                                  lambda: _record(state, engine), engine.kv_events,
                                  heartbeat_s=config.heartbeat_s)
        await presence.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_MARKER} {worker_id} {state.address} metrics={state.metrics_port}",
          flush=True)
    log.info("%s worker %s serving %s on %s", config.role, worker_id, engine_cfg.model,
             state.address)

    async def refresh_stats():
        while True:
            await asyncio.sleep(0.25)
            state.stats = await engine.stats()

    stats_task = asyncio.create_task(refresh_stats())
    await stop.wait()

    # Drain: take no new requests, finish the running ones and let held leases end.
    state.draining = True
    log.info("draining %s: %d requests in flight", worker_id, state.in_flight)
    if presence is not None:
        await presence.heartbeat_now()
    deadline = time.time() + config.drain_timeout_s
    while time.time() < deadline:
        held = state.stats.transfer.num_held if state.stats and state.stats.transfer else 0
        if state.in_flight == 0 and held == 0:
            break
        await asyncio.sleep(0.1)
    stats_task.cancel()
    await server.stop(grace=2.0)
    if presence is not None:
        await presence.stop(deregister=True)
    engine.shutdown()
    log.info("%s stopped", worker_id)


def main_for_role(config: WorkerConfig, servicer_cls: type[BaseServicer]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_worker(config, servicer_cls))
    except (ValueError, FileNotFoundError) as e:
        print(f"pdserve {config.role}: error: {e}", file=sys.stderr)
        return 1
    return 0
