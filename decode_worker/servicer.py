"""The decode role's gRPC service: the shared RPCs, ``Decode`` (worker/decode_rpc.py) and, when
the worker runs colocated (``--role both``), ``Prefill`` (worker/prefill_rpc.py)."""

from __future__ import annotations

import grpc

from worker.decode_rpc import release_refused_handle, serve_decode
from worker.prefill_rpc import serve_prefill
from worker.servicer_base import BaseServicer


class DecodeServicer(BaseServicer):
    async def Decode(self, request, context):
        try:
            params = await self.check_request(request, context)
        except BaseException:  # refused (draining, version, bad request): free the KV now
            await release_refused_handle(self.engine, request)
            raise
        async for chunk in serve_decode(self.engine, self.state, request, params, context):
            yield chunk

    async def Prefill(self, request, context):
        if self.role != "both":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "this decode worker does not serve Prefill (start it with "
                                "--role both for colocated serving)")
        params = await self.check_request(request, context)
        return await serve_prefill(self.engine, self.state, request, params, context)
