"""Instant mock workers for measuring the router alone (not the engine).

They speak the real gRPC contract and register in Redis like real workers, but answer at once:
``Prefill`` returns a fixed first token and a dummy KV handle, ``Decode`` streams the requested
number of tokens without computing anything. Used only by benchmarks/router_bench.py; they are
mocks, and the numbers they give are the router's overhead, nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time

import grpc

from common.redis_schema import Keys, WorkerRecord
from proto import API_VERSION, pb, pb_grpc
from worker.presence import WorkerPresence


class MockServicer(pb_grpc.WorkerServicer):
    async def Prefill(self, request, context):
        return pb.PrefillResponse(
            request_id=request.request_id, first_token=7, text="a",
            num_prompt_tokens=len(request.prompt_token_ids),
            kv_handle=pb.KVHandle(protocol_version=1, request_id=request.request_id,
                                  num_tokens=len(request.prompt_token_ids)))

    async def Decode(self, request, context):
        produced = 0 if request.WhichOneof("prompt_kv") == "prefill_here" else 1
        while produced < request.sampling.max_tokens:
            produced += 1
            last = produced == request.sampling.max_tokens
            yield pb.DecodeChunk(token_ids=[7], text="a", finish_reason="length" if last else "",
                                 num_prompt_tokens=len(request.prompt_token_ids))

    async def Abort(self, request, context):
        return pb.AbortResponse(found=False)

    async def Health(self, request, context):
        return pb.HealthResponse(ok=True, api_version=API_VERSION)


async def serve(redis_url: str, prefix: str, num_prefill: int, num_decode: int) -> None:
    presences = []
    for role, count in (("prefill", num_prefill), ("decode", num_decode)):
        for i in range(count):
            server = grpc.aio.server()
            pb_grpc.add_WorkerServicer_to_server(MockServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            record = WorkerRecord(
                worker_id=f"mock-{role}-{i}", role=role, address=f"127.0.0.1:{port}",
                model="mock", compat_digest="mock", tp_size=1, block_size=16, num_blocks=100000,
                num_free_blocks=100000, max_model_len=65536, started_at=time.time())

            def current(record=record):
                return WorkerRecord(**{**record.__dict__, "heartbeat_at": time.time()})

            presence = WorkerPresence(redis_url, Keys(prefix), current, collections.deque())
            await presence.start()
            presences.append((server, presence))
            print(f"MOCK {role} 127.0.0.1:{port}", flush=True)
    print("MOCKS_READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, prefix, n_p, n_d = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(serve(url, prefix, n_p, n_d))
