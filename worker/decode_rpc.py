"""The ``Decode`` RPC: take the prompt's KV (pulled from the prefill worker named in the
request, or prefilled here), join the running batch and stream tokens until a stop condition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from common.outputs import FinishReason
from common.sampling_params import SamplingParams
from engine.async_engine import AsyncEngine
from kv_transfer.handle import IncompatibleKVError
from proto import pb
from proto.convert import handle_from_pb, logprob_from_pb, logprob_to_pb
from worker.state import InFlight, WorkerState


async def serve_decode(engine: AsyncEngine, state: WorkerState, request: pb.DecodeRequest,
                       params: SamplingParams,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DecodeChunk]:
    """``params``: the request's sampling parameters, already checked by the servicer."""
    prompt = list(request.prompt_token_ids)
    salt = tuple(request.cache_salt)
    source = request.WhichOneof("prompt_kv")
    if source == "prefill_here":
        stream = engine.generate(request.request_id, prompt_token_ids=prompt, params=params,
                                 extra_keys=salt)
    elif source == "pull_kv" and request.pull_kv.HasField("kv_handle"):
        pull = request.pull_kv
        first_logprob = (logprob_from_pb(pull.first_logprob)
                         if pull.HasField("first_logprob") else None)
        stream = engine.continue_prefilled(
            request.request_id, prompt_token_ids=prompt, first_token=pull.first_token,
            handle=handle_from_pb(pull.kv_handle), params=params, extra_keys=salt,
            first_logprob=first_logprob)
    else:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "either prefill_here or pull_kv with a kv_handle is required")
    with InFlight(state):
        try:
            async for delta in stream:
                chunk = pb.DecodeChunk(
                    token_ids=delta.new_token_ids, text=delta.text_delta,
                    logprobs=[logprob_to_pb(lp) for lp in delta.new_logprobs],
                    num_prompt_tokens=delta.num_prompt_tokens,
                    num_cached_tokens=delta.num_cached_tokens,
                )
                if delta.finished:
                    chunk.finish_reason = delta.finish_reason.value
                    if delta.finish_reason == FinishReason.ERROR:
                        chunk.error = delta.error or "request failed"
                yield chunk
        except IncompatibleKVError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


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
