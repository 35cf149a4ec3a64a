"""The ``Submit`` RPC: take the prompt's KV (pulled from the prefill worker named in the
request, or prefilled here) and join the running batch; the tokens go out on the router's
``Outputs`` stream (worker/output_streams.py), batched with its other requests.
"""

from __future__ import annotations

import grpc

from common.sampling_params import SamplingParams
from engine.async_engine import AsyncEngine
from kv_transfer.handle import IncompatibleKVError
from proto import pb
from proto.convert import handle_from_pb, logprob_from_pb
from worker.output_streams import OutputStream


async def submit_decode(engine: AsyncEngine, stream: OutputStream, request: pb.DecodeRequest,
                        params: SamplingParams,
                        context: grpc.aio.ServicerContext) -> pb.SubmitResponse:
    """``params``: the request's sampling parameters, already checked by the servicer;
    ``stream``: the Outputs stream of the router that sent it."""
    prompt = list(request.prompt_token_ids)
    salt = tuple(request.cache_salt)
    source = request.WhichOneof("prompt_kv")
    if source not in ("prefill_here", "pull_kv") or (
            source == "pull_kv" and not request.pull_kv.HasField("kv_handle")):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "either prefill_here or pull_kv with a kv_handle is required")
    stream.add(request.request_id)
    try:
        if source == "prefill_here":
            # After a migration the prompt ends with the tokens generated so far: a grammar
            # replays them (a ValueError, INVALID_ARGUMENT, if they do not follow it).
            await engine.submit(request.request_id, stream, prompt_token_ids=prompt,
                                params=params, extra_keys=salt,
                                num_generated_tokens=request.num_generated_tokens)
        else:
            pull = request.pull_kv
            first_logprob = (logprob_from_pb(pull.first_logprob)
                             if pull.HasField("first_logprob") else None)
            await engine.submit(
                request.request_id, stream, prefilled=True, prompt_token_ids=prompt,
                first_token=pull.first_token, handle=handle_from_pb(pull.kv_handle),
                params=params, extra_keys=salt, first_logprob=first_logprob)
    except BaseException as e:
        stream.forget(request.request_id)
        if isinstance(e, IncompatibleKVError):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if isinstance(e, ValueError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise
    return pb.SubmitResponse()


async def release_refused_handle(engine: AsyncEngine, request: pb.DecodeRequest) -> None:
    """Tell the owner of a refused request's KV handle that nobody here will pull it."""
    if request.WhichOneof("prompt_kv") != "pull_kv" or not request.pull_kv.HasField("kv_handle"):
        return
    try:
        handle = handle_from_pb(request.pull_kv.kv_handle)
    except Exception:  # a handle we cannot even read names no owner we could tell
        return
    await engine.call(
        lambda e: e.remote.connector.release(handle) if e.remote is not None else None)
