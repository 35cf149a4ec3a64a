"""Instant mock workers for measuring the router alone (not the engine).

They speak the real gRPC contract and register in Redis like real workers, but answer at once:
``Prefill`` returns a fixed first token and a dummy KV handle; ``Submit`` adds the request to
its router's ``Outputs`` stream, which emits one batch per "step" (one token for every request
in flight on that stream) without computing anything, as a decode worker's engine would. Like
real workers, they take both as calls or as frames on their outputs socket. Used only by
benchmarks/router_bench.py; they are mocks, and the numbers they give are the router's
overhead, nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time

import grpc

from common.cluster_secret import ENV_VAR, ClusterSecret
from common.redis_schema import Keys, WorkerRecord
from proto import API_VERSION, pb, pb_grpc
from worker.output_socket import OutputsSocket
from worker.presence import WorkerPresence


class MockServicer(pb_grpc.WorkerServicer):
    async def Prefill(self, request, context):
        return await self.prefill_on_socket("", request)

    async def prefill_on_socket(self, router_id: str, request) -> pb.PrefillResponse:
        """A prefill (the call's or an outputs socket frame's), answered at once."""
        return pb.PrefillResponse(
            request_id=request.request_id, first_token=7, text="a",
            num_prompt_tokens=len(request.prompt_token_ids),
            kv_handle=pb.KVHandle(protocol_version=1, request_id=request.request_id,
                                  num_tokens=len(request.prompt_token_ids)))

    def __init__(self, step_s: float = 0.0) -> None:
        """``step_s``: how long a decode "step" takes (0: instant, the next one at once; a
        real decode GPU's step is a few ms, and the requests in flight share it)."""
        self.step_s = step_s
        self.streams: dict[str, dict[str, int]] = {}  # router id -> request id -> tokens left
        self.wakes: dict[str, asyncio.Event] = {}

    async def Outputs(self, request, context):
        async for batch in self.batches(request.router_id):
            yield batch

    async def batches(self, router_id: str):
        """One router's stream (the gRPC call's or the outputs socket's)."""
        active = self.streams[router_id] = {}
        wake = self.wakes[router_id] = asyncio.Event()
        yield pb.OutputBatch()
        while True:
            if not active:
                wake.clear()
                await wake.wait()
                continue
            outputs = []
            for rid, left in list(active.items()):
                left -= 1
                outputs.append(pb.RequestOutput(request_id=rid, token_ids=[7], text="a",
                                                finish_reason="" if left else "length"))
                if left:
                    active[rid] = left
                else:
                    del active[rid]
            yield pb.OutputBatch(outputs=outputs)
            await asyncio.sleep(self.step_s)  # a "step" (and submissions get in)

    async def Submit(self, request, context):
        if request.router_id not in self.streams:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no Outputs stream")
        await self.submit_on_socket(request.router_id, request)
        return pb.SubmitResponse()

    async def submit_on_socket(self, router_id: str, request) -> None:
        """A submission (the Submit call's or an outputs socket frame): joins the stream."""
        pulled = request.WhichOneof("prompt_kv") == "pull_kv"
        self.streams[router_id][request.request_id] = \
            request.sampling.max_tokens - (1 if pulled else 0)
        self.wakes[router_id].set()

    async def Abort(self, request, context):
        found = any(a.pop(request.request_id, None) is not None for a in self.streams.values())
        return pb.AbortResponse(found=found)

    async def Health(self, request, context):
        return pb.HealthResponse(ok=True, api_version=API_VERSION)


async def serve(redis_url: str, prefix: str, num_prefill: int, num_decode: int,
                step_s: float = 0.0, outputs: str = "socket") -> None:
    """``outputs``: how decode mocks stream to routers, ``socket`` (the outputs socket, as
    decode workers do by default) or ``grpc`` (the Outputs call only)."""
    presences = []
    # Signed like a real worker's record, or the router would not route to the mocks.
    secret = ClusterSecret(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None
    for role, count in (("prefill", num_prefill), ("decode", num_decode)):
        for i in range(count):
            server = grpc.aio.server()
            servicer = MockServicer(step_s)
            pb_grpc.add_WorkerServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            outputs_address = ""
            if outputs == "socket":  # as real workers have
                sock = OutputsSocket(servicer.batches, secret.grpc_token if secret else None,
                                     submit=servicer.submit_on_socket,
                                     prefill=servicer.prefill_on_socket)
                outputs_address = f"127.0.0.1:{await sock.start('127.0.0.1')}"
            record = WorkerRecord(
                worker_id=f"mock-{role}-{i}", role=role, address=f"127.0.0.1:{port}",
                model="mock", compat_digest="mock", tp_size=1, block_size=16, num_blocks=100000,
                num_free_blocks=100000, max_model_len=65536, started_at=time.time(),
                outputs_address=outputs_address)

            def current(record=record):
                return WorkerRecord(**{**record.__dict__, "heartbeat_at": time.time()}
                                    ).signed(secret)

            presence = WorkerPresence(redis_url, Keys(prefix), current, collections.deque())
            await presence.start()
            presences.append((server, presence))
            print(f"MOCK {role} 127.0.0.1:{port}"
                  + (f" outputs={outputs_address}" if outputs_address else ""), flush=True)
    print("MOCKS_READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, prefix, n_p, n_d = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    step_ms = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # decode step time
    outputs = sys.argv[6] if len(sys.argv) > 6 else os.environ.get("MOCK_OUTPUTS", "socket")
    asyncio.run(serve(url, prefix, n_p, n_d, step_ms / 1000, outputs))
