"""What every worker process does besides its role: load the engine, serve gRPC, keep its
Redis presence and metrics, drain and exit cleanly.

The role packages call ``main_for_role`` with their servicer (a ``BaseServicer``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
import uuid
from dataclasses import replace

import grpc

from common import defaults
from common.redis_acl import WORKER, url_for_role
from common.redis_schema import Keys
from engine.async_engine import AsyncEngine
from proto import auth, keepalive, pb_grpc
from worker.config import WorkerConfig
from worker.output_socket import socket_for
from worker.record import worker_record
from worker.servicer_base import BaseServicer
from worker.state import WorkerState

log = logging.getLogger(__name__)

READY_MARKER = "PDSERVE_WORKER_READY"  # launchers read this line to learn the bound address


async def run_worker(config: WorkerConfig, servicer_cls: type[BaseServicer]) -> None:
    worker_id = config.worker_id or f"{config.role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    engine_cfg = config.engine
    if engine_cfg.engine_id is None:
        engine_cfg = replace(engine_cfg, engine_id=f"{worker_id}-{uuid.uuid4().hex[:6]}")
        config = replace(config, engine=engine_cfg)
    state = WorkerState(config, worker_id)
    engine = AsyncEngine(engine_cfg)
    log.info("loading %s for %s", engine_cfg.model, worker_id)
    await engine.start()

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", defaults.GRPC_MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", defaults.GRPC_MAX_MESSAGE_BYTES),
                                      *keepalive.server_options()],  # the router's pings
                             interceptors=auth.server_interceptors(
                                 secret.grpc_token if (secret := config.cluster_secret) else None))
    if secret is None:
        log.warning("no cluster secret (--insecure): anyone who reaches %s:%s can call this "
                    "worker, and its registry record is unsigned", config.host, config.port)
    servicer = servicer_cls(engine, state)
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    host = config.advertise_host or (config.host if config.host not in ("0.0.0.0", "::")
                                     else socket.gethostname())
    state.address = f"{host}:{port}"
    outputs_socket = None
    if config.outputs_port >= 0:
        outputs_socket = socket_for(servicer, config.role, secret.grpc_token if secret else None)
        outputs_port = await outputs_socket.start(config.host, config.outputs_port)
        state.outputs_address = f"{host}:{outputs_port}"

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

        presence = WorkerPresence(url_for_role(config.redis_url, secret, WORKER),
                                  Keys(config.redis_prefix),
                                  lambda: worker_record(state, engine).signed(secret),
                                  engine.kv_events, heartbeat_s=config.heartbeat_s)
        await presence.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_MARKER} {worker_id} {state.address} metrics={state.metrics_port} "
          f"outputs={state.outputs_address or '-'}", flush=True)
    log.info("%s worker %s serving %s on %s%s", config.role, worker_id, engine_cfg.model,
             state.address, f" (outputs socket {state.outputs_address})"
             if state.outputs_address else "")

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
    if outputs_socket is not None:
        await outputs_socket.close()
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
