"""The decode worker's outputs socket (proto/frames.py) against a real decode worker: the same
outputs as its gRPC Outputs stream, submissions on it equal to the Submit call's (refusals by
the same code and words), refusals by name for connections without the cluster token, and a
router that goes away ending its requests on the worker."""

import asyncio
import socket
import time

import pytest

from proto import API_VERSION, pb, pb_grpc
from proto.frames import FrameReader, frame
from router.worker_streams import CallRefused
from tests.cluster_helpers import WorkerProcess, cluster_secret, worker_channel
from tests.decode_client import DecodeClient
from tests.helpers import random_prompts

MODEL_ARGS = ["--model", "random:tiny-llama", "--device", "cpu", "--seed", "3",
              "--kv-cache-gib", "0.02", "--kv-transfer", "none"]


@pytest.fixture(scope="module")
def decode():
    worker = WorkerProcess("decode", MODEL_ARGS, None)
    yield worker
    assert worker.stop() == 0, "".join(worker.log_lines[-20:])


def request(rid: str, prompt: list[int], max_tokens: int) -> pb.DecodeRequest:
    return pb.DecodeRequest(
        api_version=API_VERSION, request_id=rid, prompt_token_ids=prompt,
        prefill_here=pb.LocalPrefill(),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                   ignore_eos=True, skip_special_tokens=True))


def test_socket_and_grpc_stream_carry_the_same_outputs(decode):
    assert decode.outputs_address, "a decode worker opens its outputs socket by default"
    prompts = random_prompts(4, 512, 8, 40, seed=11)

    async def run(outputs_address: str) -> list[list[int]]:
        async with DecodeClient(decode.address, outputs_address) as client:
            results = await asyncio.gather(*(
                client.run(request(f"{outputs_address or 'grpc'}-{i}", p, 24))
                for i, p in enumerate(prompts)))
        return [[t for o in outs for t in o.token_ids] for outs in results]

    via_socket = asyncio.run(run(decode.outputs_address))
    assert via_socket == asyncio.run(run(""))
    assert all(len(tokens) == 24 for tokens in via_socket)


def test_socket_submissions_equal_the_submit_call(decode):
    prompts = random_prompts(4, 512, 8, 40, seed=12)

    async def run(as_router: bool) -> list[list[int]]:
        async with DecodeClient(decode.address, decode.outputs_address) as client:
            results = await asyncio.gather(*(
                client.run(request(f"frames-{as_router}-{i}", p, 16), as_router=as_router)
                for i, p in enumerate(prompts)))
            stream = client.outputs._streams[decode.address]
            assert stream.takes_submit, "a decode worker takes submissions on its socket"
        return [[t for o in outs for t in o.token_ids] for outs in results]

    via_frames = asyncio.run(run(True))
    assert via_frames == asyncio.run(run(False))
    assert all(len(tokens) == 16 for tokens in via_frames)


def test_socket_submission_refusals_name_the_submit_calls_code(decode):
    """What the Submit call refuses, a frame gets back as a refusal output with the same code
    and details, and the connection goes on serving."""
    no_kv = request("no-kv", [5, 6, 7], 4)
    no_kv.ClearField("prefill_here")
    old = request("old", [5, 6, 7], 4)
    old.api_version = API_VERSION - 1
    empty = request("empty", [], 4)

    async def scenario():
        async with DecodeClient(decode.address, decode.outputs_address) as client:
            refusals = []
            for bad in (no_kv, old, empty):
                with pytest.raises(CallRefused) as info:
                    await client.run(bad, as_router=True)
                refusals.append((info.value.code, info.value.details))
                with pytest.raises(Exception) as call:
                    await client.run(bad)
                assert (call.value.code().name, call.value.details()) == refusals[-1]
            good = await client.run(request("after", [5, 6, 7], 4), as_router=True)
        return refusals, good

    refusals, good = asyncio.run(scenario())
    assert [code for code, _ in refusals] == ["INVALID_ARGUMENT", "FAILED_PRECONDITION",
                                              "INVALID_ARGUMENT"]
    assert "prefill_here or pull_kv" in refusals[0][1] and "api_version" in refusals[1][1]
    assert sum(len(o.token_ids) for o in good) == 4 and good[-1].finish_reason == "length"


def test_a_frame_that_is_not_a_router_frame_closes_the_connection(decode):
    token = cluster_secret().grpc_token
    host, port = decode.outputs_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(frame(pb.OutputsRequest(api_version=API_VERSION, router_id="garbler",
                                          token=token).SerializeToString()))
        frames, got = FrameReader(), []
        while not got:
            got = frames.feed(s.recv(65536))
        s.sendall(frame(b"\xff\xfe not protobuf"))
        s.settimeout(10)
        while s.recv(65536):  # whatever was in flight, then the close
            pass


def _hello(address: str, hello: pb.OutputsRequest | bytes) -> pb.OutputBatch | None:
    """Connect, send ``hello``, return the worker's first batch (None: it just closed)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(hello if isinstance(hello, bytes) else frame(hello.SerializeToString()))
        frames = FrameReader()
        while True:
            data = s.recv(65536)
            if not data:
                return None
            payloads = frames.feed(data)
            if payloads:
                return pb.OutputBatch.FromString(payloads[0])


@pytest.mark.parametrize("token,why", [("", "no cluster token"),
                                       ("not-the-token", "wrong cluster token")])
def test_a_stream_without_the_cluster_token_is_refused_by_name(decode, token, why):
    batch = _hello(decode.outputs_address, pb.OutputsRequest(
        api_version=API_VERSION, router_id="intruder", token=token))
    assert batch is not None and why in batch.refused, batch


def test_wrong_version_and_garbage_are_refused(decode):
    token = cluster_secret().grpc_token
    old = _hello(decode.outputs_address, pb.OutputsRequest(api_version=API_VERSION - 1,
                                                           router_id="r", token=token))
    assert "api_version" in old.refused, old
    no_id = _hello(decode.outputs_address, pb.OutputsRequest(api_version=API_VERSION,
                                                             token=token))
    assert "router_id" in no_id.refused, no_id
    # A length prefix far past the hello's limit: dropped without buffering it.
    assert _hello(decode.outputs_address, b"\xff\xff\xff\x7f" + b"x" * 100) is None
    # The worker still serves afterwards.
    assert _hello(decode.outputs_address, pb.OutputsRequest(
        api_version=API_VERSION, router_id="after-garbage", token=token)).refused == ""


def test_a_router_that_goes_away_ends_its_requests_on_the_worker(decode):
    """The socket closing mid-stream aborts that router's requests (nothing keeps running or
    holding blocks for a router that cannot hear the answer)."""
    token = cluster_secret().grpc_token
    host, port = decode.outputs_address.rsplit(":", 1)

    async def scenario():
        async with worker_channel(decode.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(frame(pb.OutputsRequest(api_version=API_VERSION, router_id="leaving",
                                                 token=token).SerializeToString()))
            frames, got = FrameReader(), []
            while not got:  # registered
                got = frames.feed(await reader.read(65536))
            submit = request("long-one", list(range(5, 40)), 4000)
            submit.router_id = "leaving"
            await stub.Submit(submit, timeout=30)
            tokens = 0
            while tokens < 3:  # it is decoding
                for payload in frames.feed(await reader.read(65536)):
                    tokens += sum(len(o.token_ids) for o in
                                  pb.OutputBatch.FromString(payload).outputs)
            writer.close()
            deadline = time.time() + 20
            while time.time() < deadline:
                stats = await stub.Stats(pb.StatsRequest())
                if stats.num_running == 0 and stats.num_output_streams == 0:
                    return stats
                await asyncio.sleep(0.1)
            raise AssertionError(f"the request kept running after its router left: {stats}")

    stats = asyncio.run(scenario())
    assert stats.num_blocks_in_use == 0
