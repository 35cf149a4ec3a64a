"""Telling workers to drop a request, in the background: the caller is often a cancelled task
or a closing generator, which cannot wait for the answers."""

from __future__ import annotations

import asyncio
import logging

import grpc

from common.redis_schema import WorkerRecord
from proto import pb

log = logging.getLogger(__name__)

# Each try's timeout: a held lease should end within about a second of its request, but a
# worker busy with a long CPU step (seconds) answers late, and an abort that never lands lets
# a departed client's prefill run for nobody (the 2-core VM: 8 cancelled 2.5k-token prompts
# kept a prefill worker busy for 43 s when one 1 s try was all).
ABORT_TIMEOUTS_S = (1.0, 4.0, 16.0)
_BACKGROUND: set[asyncio.Task] = set()  # aborts still running (the loop keeps weak references)


def abort_later(clients, records: list[WorkerRecord], request_id: str) -> None:
    """Abort ``request_id`` on each worker in order (``clients.stub(address)``: its gRPC
    stub); a try that times out is repeated with a longer timeout. Abort is idempotent."""
    task = asyncio.ensure_future(_abort_each(clients, records, request_id))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _abort_each(clients, records: list[WorkerRecord], request_id: str) -> None:
    for record in records:
        for timeout in ABORT_TIMEOUTS_S:
            try:
                await clients.stub(record.address).Abort(pb.AbortRequest(request_id=request_id),
                                                         timeout=timeout)
                break
            except grpc.aio.AioRpcError as e:
                busy = e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                if busy and timeout != ABORT_TIMEOUTS_S[-1]:
                    continue
                log.info("abort of %s on %s failed: %s", request_id, record.worker_id,
                         e.code().name)
            except Exception as e:  # best effort: a dead worker's lease dies with it
                log.info("abort of %s on %s failed: %s", request_id, record.worker_id, e)
            break
