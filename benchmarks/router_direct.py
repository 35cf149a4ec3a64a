"""Direct-to-mock baseline for router_bench: the same prefill + decode the router does for one
request, made straight to the mock workers, one at a time, on the carrier that tree's router
uses.

Run as a script with PYTHONPATH set to the tree under test, so it speaks that tree's proto:
it imports nothing of this checkout but ``proto`` (the tree's), grpc and, for trees whose
decode output is one stream per router (API v3: ``Submit`` + ``Outputs``), the tree's own
``router.worker_streams`` client: trees whose client submits and prefills as frames on the
workers' outputs sockets do so here too (given the prefill mock's socket), the others make the
Prefill and Submit calls. Knows the older shapes too: a per-request ``Decode`` stream with API
v2's ``pull_kv`` oneof or v1's loose first_token/kv_handle fields.

    PYTHONPATH=TREE python benchmarks/router_direct.py PREFILL_ADDR DECODE_ADDR PROMPT_TOKENS N \
        [OUTPUTS_ADDR [PREFILL_OUTPUTS_ADDR]]
prints one line ``DIRECT {"latencies_s": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


def decode_request(pb, api_version: int, rid: str, prompt: list[int], sp, first):
    fields = pb.DecodeRequest.DESCRIPTOR.fields_by_name
    common = dict(api_version=api_version, request_id=rid, prompt_token_ids=prompt, sampling=sp)
    if "pull_kv" in fields:
        return pb.DecodeRequest(**common, pull_kv=pb.PulledKV(
            first_token=first.first_token, kv_handle=first.kv_handle))
    return pb.DecodeRequest(**common, prefill_locally=False, first_token=first.first_token,
                            kv_handle=first.kv_handle)


async def measure(prefill_addr: str, decode_addr: str, prompt_tokens: int, n: int,
                  outputs_addr: str = "", prefill_outputs_addr: str = "",
                  max_tokens: int = 16) -> list[float]:
    """``outputs_addr`` / ``prefill_outputs_addr``: the decode / prefill mock's outputs socket
    (trees that have them), used the way that tree's router uses them."""
    import grpc

    from proto import API_VERSION, pb, pb_grpc

    prompt = list(range(100, 100 + prompt_tokens))
    sp = pb.SamplingParams(max_tokens=max_tokens, temperature=0, top_p=1)
    out = []
    async with grpc.aio.insecure_channel(prefill_addr) as pc, \
            grpc.aio.insecure_channel(decode_addr) as dc:
        p, d = pb_grpc.WorkerStub(pc), pb_grpc.WorkerStub(dc)
        outputs = None
        if hasattr(pb, "OutputBatch"):  # API v3: outputs arrive on one stream per router
            try:
                from router.worker_streams import WorkerStreams
            except ImportError:  # trees before session 12 named it so
                from router.decode_outputs import DecodeOutputs as WorkerStreams

            if outputs_addr:  # the socket's hello carries the cluster token
                import os

                from common.cluster_secret import ENV_VAR, ClusterSecret

                secret = os.environ.get(ENV_VAR)
                outputs = WorkerStreams({prefill_addr: p, decode_addr: d}.get,
                                        token=ClusterSecret(secret).grpc_token
                                        if secret else None)
            else:
                outputs = WorkerStreams(lambda _: d)
        on_socket = outputs is not None and hasattr(outputs, "prefill") and prefill_outputs_addr
        for i in range(n + 20):  # the first 20 warm the channels up and are dropped
            started = time.perf_counter()
            prefill = pb.PrefillRequest(api_version=API_VERSION, request_id=f"d{i}",
                                        prompt_token_ids=prompt, sampling=sp)
            if on_socket:
                first = await outputs.prefill(prefill_addr, prefill_outputs_addr, prefill, 30)
            else:
                first = await p.Prefill(prefill)
            request = decode_request(pb, API_VERSION, f"d{i}", prompt, sp, first)
            if outputs is None:
                async for _ in d.Decode(request):
                    pass
            else:
                await _submit_and_wait(outputs, d, decode_addr, request, outputs_addr)
            if i >= 20:
                out.append(time.perf_counter() - started)
        if outputs is not None:
            await outputs.close()
    return out


async def _submit_and_wait(outputs, stub, address: str, request, outputs_addr: str) -> None:
    request.router_id = outputs.router_id
    inbox = await (outputs.subscribe(address, request.request_id, outputs_addr) if outputs_addr
                   else outputs.subscribe(address, request.request_id))
    try:
        if hasattr(outputs, "submit"):  # as that tree's router submits (a frame or the call)
            await outputs.submit(address, request, 30)
        else:
            await stub.Submit(request, timeout=30)
        deadline = asyncio.get_running_loop().time() + 60
        received = []
        while not (received and received[-1].finish_reason):
            received.extend(await inbox.take(deadline))
    finally:
        outputs.unsubscribe(request.request_id, inbox)


if __name__ == "__main__":
    lat = asyncio.run(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                              *sys.argv[5:7]))
    print("DIRECT " + json.dumps({"latencies_s": lat}), flush=True)
