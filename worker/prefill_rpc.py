"""The ``Prefill`` RPC: prefill a prompt, sample its first token and (when more tokens are
wanted) keep the prompt KV under a lease for the decode worker that will pull it.

One function, called by the prefill role and by a decode worker running colocated
(``--role both``), so both serve exactly the same RPC.
"""

from __future__ import annotations

import dataclasses

import grpc

from common.outputs import FinishReason
from common.sampling_params import SamplingParams
from engine.async_engine import AsyncEngine
from proto import pb
from proto.convert import handle_to_pb, logprob_to_pb
from worker.state import InFlight, WorkerState


async def serve_prefill(engine: AsyncEngine, state: WorkerState, request: pb.PrefillRequest,
                        params: SamplingParams,
                        context: grpc.aio.ServicerContext) -> pb.PrefillResponse:
    """``params``: the request's sampling parameters, already checked by the servicer."""
    # The engine stops after one token; when more are wanted it keeps the prompt KV under
    # a lease for the decode worker instead of freeing it.
    wants_more = params.max_tokens > 1
    one_token = dataclasses.replace(params, max_tokens=1)
    final = None
    with InFlight(state):
        try:
            async for delta in engine.generate(
                request.request_id, prompt_token_ids=list(request.prompt_token_ids),
                params=one_token, extra_keys=tuple(request.cache_salt), hold_kv=wants_more,
            ):
                final = delta
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    if final is None or final.finish_reason in (FinishReason.ABORT, FinishReason.ERROR):
        await context.abort(grpc.StatusCode.ABORTED,
                            final.error if final and final.error else "request aborted")
    state.prefills_served += 1
    response = pb.PrefillResponse(
        request_id=request.request_id, first_token=final.new_token_ids[0],
        num_prompt_tokens=final.num_prompt_tokens,
        num_cached_tokens=final.num_cached_tokens, text=final.text_delta,
    )
    if final.new_logprobs:
        response.first_logprob.CopyFrom(logprob_to_pb(final.new_logprobs[0]))
    if final.kv_handle is not None:
        response.kv_handle.CopyFrom(handle_to_pb(final.kv_handle))
    else:  # the first token ended it (EOS, stop, or max_tokens == 1)
        response.finish_reason = final.finish_reason.value
    return response
