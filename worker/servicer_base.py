"""The gRPC ``Worker`` service every role shares: Abort, Health, Stats and request guards.

Each role package (``prefill_worker/``, ``decode_worker/``) subclasses ``BaseServicer`` and
adds its RPCs; the RPC logic itself lives in ``worker/`` (e.g. ``worker/prefill_rpc.py``).
"""

from __future__ import annotations

import grpc

from engine.async_engine import AsyncEngine
from proto import API_VERSION, pb, pb_grpc
from proto.convert import sampling_from_pb
from worker.call_refusal import REFUSING
from worker.state import WorkerState


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

    async def prefill_on_socket(self, router_id: str, request) -> pb.PrefillResponse:
        """Prefill as it arrives on a router's outputs socket connection (roles that serve
        Prefill): the same checks; a refusal raises worker/call_refusal.Refused."""
        return await self.Prefill(request, REFUSING)

    async def Abort(self, request, context):
        # Also ends the request's output (an ``abort`` finish), so whatever waits on it, an
        # Outputs stream included, lets go of it.
        found = await self.engine.abort_request(request.request_id)
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
            prefills_served=self.state.prefills_served,
        )
