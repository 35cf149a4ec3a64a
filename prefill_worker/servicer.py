"""The prefill role's gRPC service: the shared RPCs plus ``Prefill`` (worker/prefill_rpc.py)."""

from __future__ import annotations

from worker.prefill_rpc import serve_prefill
from worker.servicer_base import BaseServicer


class PrefillServicer(BaseServicer):
    async def Prefill(self, request, context):
        params = await self.check_request(request, context)
        return await serve_prefill(self.engine, self.state, request, params, context)
