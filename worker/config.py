"""A worker process's configuration: one frozen dataclass, built at the edge (the role's CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from common import defaults
from common.cluster_secret import ClusterSecret
from engine.config import EngineConfig


@dataclass(frozen=True)
class WorkerConfig:
    role: str  # prefill | decode | both
    engine: EngineConfig
    host: str = "127.0.0.1"  # interface to bind
    port: int = 0  # 0: any free port (printed on the ready line and in the registry)
    outputs_port: int = 0  # decode roles' outputs socket: 0 any free port, -1 off (gRPC only)
    advertise_host: str | None = None  # address others dial (gRPC, KV agent); CLI: auto-detected
    redis_url: str | None = defaults.REDIS_URL  # None: run without a registry
    redis_prefix: str = defaults.REDIS_KEY_PREFIX
    metrics_port: int | None = 0  # 0: any free port; None: no metrics endpoint
    worker_id: str | None = None
    heartbeat_s: float = defaults.HEARTBEAT_S
    drain_timeout_s: float = 120.0
    # Authenticates every call to this worker (a token derived from it), its Redis user and
    # the signature on its registry record. None only with --insecure.
    cluster_secret: ClusterSecret | None = None
