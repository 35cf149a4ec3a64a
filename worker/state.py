"""What a running worker knows about itself, shared by its servicer, heartbeat and drain."""

from __future__ import annotations

import time

from engine.llm_engine import EngineStats
from worker.config import WorkerConfig


class WorkerState:
    def __init__(self, config: WorkerConfig, worker_id: str):
        self.config = config
        self.worker_id = worker_id
        self.draining = False
        self.in_flight = 0  # role RPCs running (InFlight); draining waits for zero
        self.prefills_served = 0  # Prefill RPCs answered with a first token
        self.stats: EngineStats | None = None  # refreshed by the server's loop
        self.address = ""
        self.outputs_address = ""  # decode roles: host:port of the outputs socket
        self.metrics_port = 0
        self.started_at = time.time()


class InFlight:
    """Counts a request as in flight for draining."""

    def __init__(self, state: WorkerState):
        self.state = state

    def __enter__(self):
        self.state.in_flight += 1

    def __exit__(self, *exc):
        self.state.in_flight -= 1
