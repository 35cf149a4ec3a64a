"""The registry record a worker heartbeats (``common/redis_schema.py``), from its live state."""

from __future__ import annotations

import os
import time

from common.redis_schema import WorkerRecord
from engine.async_engine import AsyncEngine
from proto import API_VERSION
from worker.state import WorkerState


def worker_record(state: WorkerState, engine: AsyncEngine) -> WorkerRecord:
    cfg = state.config
    eng = engine.engine
    s = state.stats
    return WorkerRecord(
        worker_id=state.worker_id, role=cfg.role, address=state.address,
        outputs_address=state.outputs_address,
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
