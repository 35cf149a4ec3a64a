"""The decode role's gRPC service: the shared RPCs, ``Outputs`` and ``Submit`` (the output
plane in worker/output_streams.py, submission in worker/decode_rpc.py) and, when the worker
runs colocated (``--role both``), ``Prefill`` (worker/prefill_rpc.py)."""

from __future__ import annotations

import contextlib

import grpc

from proto import API_VERSION
from worker.call_refusal import REFUSING
from worker.decode_rpc import release_refused_handle, submit_decode
from worker.output_streams import OutputStreams
from worker.prefill_rpc import serve_prefill
from worker.servicer_base import BaseServicer


class DecodeServicer(BaseServicer):
    def __init__(self, engine, state):
        super().__init__(engine, state)
        self.outputs = OutputStreams(engine, state)

    async def Outputs(self, request, context):
        if request.api_version != API_VERSION:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"api_version {request.api_version} is not supported; this "
                                f"worker speaks {API_VERSION}")
        if not request.router_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "router_id is required")
        # Closed explicitly when the call ends: its finally aborts this router's requests.
        async with contextlib.aclosing(self.outputs.serve(request.router_id)) as batches:
            async for batch in batches:
                yield batch

    async def Submit(self, request, context):
        try:
            params = await self.check_request(request, context)
            stream = self.outputs.get(request.router_id)
            if stream is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"no Outputs stream is open for router "
                                    f"{request.router_id!r}; open one before submitting")
        except BaseException:  # refused (draining, version, bad request): free the KV now
            await release_refused_handle(self.engine, request)
            raise
        return await submit_decode(self.engine, stream, request, params, context)

    async def submit_on_socket(self, router_id: str, request) -> None:
        """Submit as it arrives on ``router_id``'s outputs socket connection (its stream is
        that connection's): the same checks; a refusal raises worker/call_refusal.Refused."""
        request.router_id = router_id
        await self.Submit(request, REFUSING)

    async def Prefill(self, request, context):
        if self.role != "both":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "this decode worker does not serve Prefill (start it with "
                                "--role both for colocated serving)")
        params = await self.check_request(request, context)
        return await serve_prefill(self.engine, self.state, request, params, context)

    async def Stats(self, request, context):
        response = await super().Stats(request, context)
        response.output_batches = self.outputs.batches_sent
        response.output_tokens = self.outputs.tokens_sent
        response.num_output_streams = self.outputs.num_open
        return response
