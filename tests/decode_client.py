"""A decode worker's client for tests that talk gRPC directly: ``Submit`` plus the worker's
output plane, read through the router's own ``WorkerStreams`` (one Outputs stream per client,
as one router process has)."""

from __future__ import annotations

import asyncio

from proto import pb, pb_grpc
from router.worker_streams import WorkerStreams
from tests.cluster_helpers import cluster_secret, worker_channel


class DecodeClient:
    def __init__(self, address: str, outputs_address: str = ""):
        """``outputs_address``: read outputs from the worker's outputs socket, as routers do
        ("": its gRPC Outputs stream)."""
        self.address = address
        self.outputs_address = outputs_address
        self.channel = worker_channel(address)
        self.stub = pb_grpc.WorkerStub(self.channel)
        self.outputs = WorkerStreams(lambda _: self.stub, token=cluster_secret().grpc_token)

    async def __aenter__(self) -> DecodeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.outputs.close()
        await self.channel.close()

    async def run(self, request: pb.DecodeRequest, cancel_after: int | None = None,
                  timeout_s: float = 120.0, as_router: bool = False) -> list[pb.RequestOutput]:
        """Submit ``request`` (refusals raise ``grpc.aio.AioRpcError``) and return its outputs
        up to the finish; with ``cancel_after``, Abort it once that many tokens came back and
        return what came until then. ``as_router``: submit as routers do (a frame on the
        outputs socket when the worker takes them; refusals raise ``CallRefused``)."""
        rid = request.request_id
        request.router_id = self.outputs.router_id
        inbox = await self.outputs.subscribe(self.address, rid, self.outputs_address)
        received: list[pb.RequestOutput] = []
        try:
            if as_router:
                await self.outputs.submit(self.address, request, 30)
            else:
                await self.stub.Submit(request, timeout=30)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not (received and received[-1].finish_reason):
                received.extend(await inbox.take(deadline))
                tokens = sum(len(o.token_ids) for o in received)
                if cancel_after is not None and tokens >= cancel_after:
                    await self.stub.Abort(pb.AbortRequest(request_id=rid), timeout=5)
                    break
        finally:
            self.outputs.unsubscribe(rid, inbox)
        return received
