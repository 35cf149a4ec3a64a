"""Answering one admitted request: the dispatcher's token events become an OpenAI response, a
JSON body or an SSE stream, and the request's admission slot is released when it ends, however
it ends (finished, failed, the client gone, the response never started)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import JSONResponse

from router import openai_format as fmt
from router.admission import Slot
from router.chat_output import OutputShaper, legacy_finish, openai_delta, openai_message
from router.dispatcher import (
    BadRequestError,
    GenerateRequest,
    NoWorkersError,
    TokenEvent,
    UpstreamError,
)
from router.errors import APIError, bad_request, unavailable
from router.streaming import ClosingStreamingResponse, LastChunk


async def respond(state, request: Request, req: GenerateRequest, model: str, stream: bool,
                  kind: str, include_usage: bool, want_logprobs: bool, slot: Slot,
                  shaper: OutputShaper | None = None, legacy: bool = False, n: int = 1,
                  continuous_usage: bool = False):
    """Owns ``slot`` from here on: released when the response ends, or now if this raises.
    ``continuous_usage``: every stream chunk carries the usage so far."""
    if n > 1:
        from router.respond_choices import respond_choices

        return await respond_choices(state, request, req, model, stream, kind, include_usage,
                                     want_logprobs, slot, n, continuous_usage)
    agen = state.dispatcher.generate(req)
    try:
        first = await _prime(state, agen, request)
    except BaseException:
        slot.release()
        raise
    vocab = state.model
    if stream:
        body = _stream(agen, first, req, model, kind, include_usage, want_logprobs, vocab,
                       shaper or OutputShaper(), legacy, continuous_usage)
        return ClosingStreamingResponse(_Body(body, agen, slot), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache"})
    try:
        events = await _collect_watching(agen, first, request)
    finally:
        slot.release()
    if events is None:
        return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
    text = "".join(e.text for e in events)
    tokens = sum(len(e.token_ids) for e in events)
    logprobs = [lp for e in events for lp in e.logprobs]
    finish = next((e.finish_reason for e in reversed(events) if e.finish_reason), None)
    usage = fmt.usage(len(req.prompt_token_ids), tokens, events[0].num_cached_tokens)
    if kind == "chat":
        lp = fmt.chat_logprobs(logprobs, vocab) if want_logprobs else None
        shaper = shaper or OutputShaper()
        shaper.feed(text, final=True)
        finish = legacy_finish(shaper.finish_reason(finish), legacy)
        return fmt.JSONBody(fmt.chat_response(req.request_id, model,
                                              openai_message(shaper, legacy), finish, lp, usage))
    lp = fmt.completion_logprobs(logprobs, vocab, 0) if want_logprobs else None
    return fmt.JSONBody(fmt.completion_response(req.request_id, model, text, finish, lp, usage))


class _Body:
    """The SSE body. Its ``aclose`` (which ClosingStreamingResponse always calls) closes the
    dispatcher's generator and releases the slot even when the body never started: closing a
    generator that never ran skips its ``finally``, and the request would stay admitted."""

    def __init__(self, body: AsyncIterator[bytes], agen: AsyncIterator[TokenEvent], slot: Slot):
        self._body, self._agen, self._slot = body, agen, slot

    def __aiter__(self):
        return self

    def __anext__(self):  # the body's own awaitable: no extra coroutine per chunk
        return self._body.__anext__()

    async def aclose(self) -> None:
        try:
            await self._body.aclose()
            await self._agen.aclose()
        finally:
            self._slot.release()


# While the first event is awaited (queueing, prefill, the KV hand-off: seconds for a long
# prompt), the client is checked this often; one that left has its request cancelled, which
# aborts the prefill (router/dispatcher.py) instead of computing it for nobody.
FIRST_EVENT_POLL_S = 0.25


async def _prime(state, agen: AsyncIterator, request: Request):
    """The first event, so failures before any output become proper HTTP statuses; a 499 (and
    the request cancelled) if the client leaves before it. A task and a wait cost ~10 us a
    request over awaiting the event directly (measured here), for noticing a departure."""
    task = asyncio.ensure_future(agen.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=FIRST_EVENT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await agen.aclose()  # counted there: outcome "cancelled"
                raise APIError(499, "the client disconnected before the first token",
                               code="client_disconnected")
    except asyncio.CancelledError:  # our own task cancelled: the step with it
        task.cancel()
        raise
    try:
        return task.result()
    except StopAsyncIteration:
        raise APIError(502, "the workers returned no output", type_="server_error") from None
    except NoWorkersError as e:
        state.metrics.rejected.labels("no_workers").inc()
        raise unavailable(str(e)) from None
    except BadRequestError as e:
        raise bad_request(str(e)) from None
    except UpstreamError as e:
        raise APIError(502, str(e), type_="server_error") from None


async def _collect_watching(agen: AsyncIterator[TokenEvent], first: TokenEvent,
                            request: Request) -> list[TokenEvent] | None:
    """Every event, or None if the client gave up meanwhile (then the work is cancelled)."""
    return await watching(_collect(agen, first), request)


async def watching(collect: Awaitable[list], request: Request) -> list | None:
    """``collect``'s result, or None if the client gave up meanwhile (then it is cancelled);
    the dispatcher's failures as the API's errors."""
    task = asyncio.create_task(collect)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            break
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
    try:
        return task.result()
    except UpstreamError as e:
        raise APIError(502, str(e), type_="server_error") from None
    except BadRequestError as e:
        raise bad_request(str(e)) from None


async def _collect(agen: AsyncIterator[TokenEvent], first: TokenEvent) -> list[TokenEvent]:
    events = [first]
    if first.finish_reason:
        await agen.aclose()
        return events
    async for event in agen:
        events.append(event)
    return events


async def _stream(agen: AsyncIterator[TokenEvent], first: TokenEvent, req: GenerateRequest,
                  model: str, kind: str, include_usage: bool, want_logprobs: bool, vocab,
                  shaper: OutputShaper, legacy: bool, continuous_usage: bool = False):
    """The SSE body, one write per token event: the chunks of one event (the role chunk with
    the first; the finish chunk with the usage chunk and ``[DONE]``) go out together, as
    several ``data:`` events in one write, which SSE clients read as they would apart. Each
    write costs the router a pass through the ASGI send chain and a socket write."""
    created = int(time.time())
    rid = req.request_id
    completion_tokens = 0
    text_offset = 0
    cached = first.num_cached_tokens
    prompt_tokens = len(req.prompt_token_ids)
    pending: list[bytes] = []  # SSE events of the write being assembled
    if kind == "chat":
        role = fmt.chat_chunk(rid, model, created, {"role": "assistant", "content": ""})
        if continuous_usage:
            role["usage"] = fmt.usage(prompt_tokens, 0, cached)
        pending.append(fmt.sse(role))

    def chunks(event: TokenEvent) -> list[dict]:
        nonlocal text_offset
        if kind == "chat":
            return _chat_chunks(event, rid, model, created, shaper, legacy,
                                fmt.chat_logprobs(event.logprobs, vocab)
                                if want_logprobs else None)
        lp = (fmt.completion_logprobs(event.logprobs, vocab, text_offset)
              if want_logprobs else None)
        text_offset += len(event.text)
        return [fmt.completion_chunk(rid, model, created, event.text, event.finish_reason, lp)]

    try:
        event = first
        while True:
            completion_tokens += len(event.token_ids)
            for c in chunks(event):
                if continuous_usage:
                    c["usage"] = fmt.usage(prompt_tokens, completion_tokens, cached)
                pending.append(fmt.sse(c))
            if event.finish_reason:
                break
            if pending:
                yield b"".join(pending)
                pending.clear()
            try:
                event = await agen.__anext__()
            except StopAsyncIteration:
                if kind == "chat":  # ended without a finish reason: what was held back
                    pending.extend(fmt.sse(c) for c in chunks(
                        TokenEvent([], finish_reason=None, text="")))
                break
        if include_usage:
            usage = fmt.usage(len(req.prompt_token_ids), completion_tokens, cached)
            make = fmt.chat_usage_chunk if kind == "chat" else fmt.completion_usage_chunk
            pending.append(fmt.sse(make(rid, model, created, usage)))
    except (UpstreamError, BadRequestError, NoWorkersError) as e:
        # Headers are sent: report in-band, as OpenAI does, then end the stream.
        pending.append(fmt.sse({"error": {"message": str(e), "type": "server_error",
                                          "param": None, "code": None}}))
    finally:
        await agen.aclose()
    pending.append(fmt.SSE_DONE)
    yield LastChunk(b"".join(pending))


def _chat_chunks(event: TokenEvent, rid: str, model: str, created: int, shaper: OutputShaper,
                 legacy: bool, lp: dict | None) -> list[dict]:
    """One event's chunks: one per part of the output (content, reasoning, a call's start, its
    argument fragments), the finish reason on the last. Text held back sends nothing."""
    final = bool(event.finish_reason)
    bodies = [openai_delta(d, legacy) for d in shaper.feed(event.text, final)]
    finish = legacy_finish(shaper.finish_reason(event.finish_reason), legacy) if final else None
    if not bodies:
        if not final and lp is None:
            return []
        bodies = [{}]
    return [fmt.chat_chunk(rid, model, created, b, finish if i == len(bodies) - 1 else None,
                           lp if i == 0 else None) for i, b in enumerate(bodies)]
