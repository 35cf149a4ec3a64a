"""Prefills as frames on a real prefill worker's outputs socket (worker/output_socket.py),
through the router's own client (router/worker_streams.py): the same answer as the Prefill
call, refusals by the same code and words, and a router that goes away mid-prefill leaving no
lease held."""

import asyncio
import time

import pytest

from proto import API_VERSION, pb, pb_grpc
from router.worker_streams import CallRefused, WorkerStreams
from tests.cluster_helpers import WorkerProcess, cluster_secret, worker_channel

MODEL_ARGS = ["--model", "random:tiny-llama", "--device", "cpu", "--seed", "3",
              "--kv-cache-gib", "0.02"]


@pytest.fixture(scope="module")
def prefill():
    worker = WorkerProcess("prefill", MODEL_ARGS, None)
    yield worker
    assert worker.stop() == 0, "".join(worker.log_lines[-20:])


def request(rid: str, prompt: list[int], max_tokens: int = 1) -> pb.PrefillRequest:
    return pb.PrefillRequest(
        api_version=API_VERSION, request_id=rid, prompt_token_ids=prompt,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                   ignore_eos=True, skip_special_tokens=True))


async def _prefill(worker, req: pb.PrefillRequest, on_socket: bool) -> pb.PrefillResponse:
    async with worker_channel(worker.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        outputs = WorkerStreams(lambda _: stub, token=cluster_secret().grpc_token)
        try:
            return await outputs.prefill(worker.address,
                                         worker.outputs_address if on_socket else "", req, 30)
        finally:
            await outputs.close()


def test_a_prefill_frame_answers_as_the_prefill_call(prefill):
    assert prefill.outputs_address, "a prefill worker opens its outputs socket by default"
    prompt = [5 + i % 40 for i in range(70)]
    via_call = asyncio.run(_prefill(prefill, request("call", prompt), False))
    via_frame = asyncio.run(_prefill(prefill, request("frame", prompt), True))
    assert via_frame.request_id == "frame" and via_frame.num_cached_tokens == 64  # the call's
    via_frame.request_id = via_call.request_id = ""
    via_frame.num_cached_tokens = 0
    assert via_frame == via_call and via_frame.num_prompt_tokens == 70
    assert via_frame.finish_reason == "length"  # one token wanted: no lease to hand over


@pytest.mark.parametrize("broken,code,words", [
    (lambda r: r.ClearField("prompt_token_ids"), "INVALID_ARGUMENT", "prompt is empty"),
    (lambda r: setattr(r, "api_version", API_VERSION - 1), "FAILED_PRECONDITION",
     "api_version"),
])
def test_a_refused_prefill_frame_names_the_calls_code(prefill, broken, code, words):
    refusals = []
    for on_socket in (True, False):
        req = request(f"bad-{on_socket}", [5, 6, 7])
        broken(req)
        with pytest.raises(CallRefused) as info:
            asyncio.run(_prefill(prefill, req, on_socket))
        refusals.append((info.value.code, info.value.details))
    assert refusals[0] == refusals[1] and refusals[0][0] == code and words in refusals[0][1]


def test_a_router_leaving_mid_prefill_holds_no_lease(prefill):
    """The connection closing cancels its prefills (as a cancelled call does), and a finished
    one's lease is released when the router aborts it."""
    long_prompt = [5 + i % 40 for i in range(400)]

    async def scenario():
        async with worker_channel(prefill.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            outputs = WorkerStreams(lambda _: stub, token=cluster_secret().grpc_token)
            task = asyncio.ensure_future(outputs.prefill(
                prefill.address, prefill.outputs_address, request("leaving", long_prompt, 50),
                30))
            while not any("leaving" in s.prefills for s in outputs._streams.values()):
                await asyncio.sleep(0.001)  # the frame is on its way
            await outputs.close()  # the router goes away
            try:
                await task
                # It finished first (a tiny model): the router aborts it, as the dispatcher
                # does for a client that left, and that releases the lease.
                await stub.Abort(pb.AbortRequest(request_id="leaving"), timeout=5)
            except CallRefused as e:  # cut short: the worker cancels it, nothing to abort
                assert e.code == "UNAVAILABLE", e
            deadline = time.time() + 20
            while time.time() < deadline:
                stats = await stub.Stats(pb.StatsRequest())
                if stats.num_running == 0 and stats.num_held_leases == 0 and \
                        stats.num_waiting == 0:
                    return stats
                await asyncio.sleep(0.1)
            raise AssertionError(f"the prefill kept running or holding KV: {stats}")

    stats = asyncio.run(scenario())
    assert stats.num_blocks_in_use == 0
