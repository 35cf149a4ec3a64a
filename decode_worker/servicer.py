"""gRPC ``Decode`` (server-streaming), plus ``Prefill`` when the worker runs colocated."""

from __future__ import annotations

import grpc

from engine.core.sequence import FinishReason
from kv_transfer.handle import IncompatibleKVError
from prefill_worker.servicer import PrefillServicer
from proto import pb
from proto.convert import handle_from_pb, logprob_from_pb, logprob_to_pb
from worker.runtime import BaseServicer, InFlight


class DecodeServicer(BaseServicer):
    async def Decode(self, request, context):
        try:
            params = await self.check_request(request, context)
        except BaseException:  # refused (draining, version, bad request): free the KV now
            await self._release_handle(request)
            raise
        prompt = list(request.prompt_token_ids)
        salt = tuple(request.cache_salt)
        if request.prefill_locally:
            stream = self.engine.generate(request.request_id, prompt_token_ids=prompt,
                                          params=params, extra_keys=salt)
        else:
            if not request.HasField("kv_handle"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "either prefill_locally or a kv_handle is required")
            first_logprob = (logprob_from_pb(request.first_logprob)
                             if request.HasField("first_logprob") else None)
            stream = self.engine.continue_prefilled(
                request.request_id, prompt_token_ids=prompt, first_token=request.first_token,
                handle=handle_from_pb(request.kv_handle), params=params, extra_keys=salt,
                first_logprob=first_logprob)
        with InFlight(self.state):
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

    async def _release_handle(self, request) -> None:
        """Tell the owner of a refused request's KV handle that nobody here will pull it."""
        if request.prefill_locally or not request.HasField("kv_handle"):
            return
        try:
            handle = handle_from_pb(request.kv_handle)
        except Exception:  # a handle we cannot even read names no owner we could tell
            return
        await self.engine.call(
            lambda e: e.remote.connector.release(handle) if e.remote is not None else None)

    async def Prefill(self, request, context):
        if self.role != "both":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "this decode worker does not serve Prefill (start it with "
                                "--role both for colocated serving)")
        return await PrefillServicer.Prefill(self, request, context)
