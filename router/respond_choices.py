"""The OpenAI response for ``n`` > 1 choices (router/choices.py runs them): a body whose
``choices`` carry their ``index``, or a stream whose chunks do; usage counts the prompt once
and the completion tokens of every choice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from router import openai_format as fmt
from router.admission import Slot
from router.choices import generate_choices
from router.dispatch_errors import BadRequestError, NoWorkersError, UpstreamError
from router.dispatcher import GenerateRequest
from router.respond import _Body, _prime, watching
from router.streaming import ClosingStreamingResponse, LastChunk
from router.token_events import TokenEvent

Indexed = tuple[int, TokenEvent]


async def respond_choices(state, request: Request, req: GenerateRequest, model: str,
                          stream: bool, kind: str, include_usage: bool, want_logprobs: bool,
                          slot: Slot, n: int, continuous_usage: bool):
    agen = generate_choices(state.dispatcher, req, n)
    try:
        first = await _prime(state, agen, request)
    except BaseException:
        slot.release()
        raise
    vocab = state.model
    if stream:
        body = _stream(agen, first, req, model, kind, n, include_usage, continuous_usage,
                       want_logprobs, vocab)
        return ClosingStreamingResponse(_Body(body, agen, slot), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache"})
    try:
        events = await _collect_watching(agen, first, request)
    finally:
        slot.release()
    if events is None:
        return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
    per_choice: list[list[TokenEvent]] = [[] for _ in range(n)]
    for index, event in events:
        per_choice[index].append(event)
    tokens = sum(len(e.token_ids) for _, e in events)
    usage = fmt.usage(len(req.prompt_token_ids), tokens, per_choice[0][0].num_cached_tokens)
    choices = []
    for index, evs in enumerate(per_choice):
        text = "".join(e.text for e in evs)
        finish = next((e.finish_reason for e in reversed(evs) if e.finish_reason), None)
        logprobs = [lp for e in evs for lp in e.logprobs]
        if kind == "chat":
            lp = fmt.chat_logprobs(logprobs, vocab) if want_logprobs else None
            body = fmt.chat_response(req.request_id, model,
                                     {"role": "assistant", "content": text}, finish, lp, usage)
        else:
            lp = fmt.completion_logprobs(logprobs, vocab, 0) if want_logprobs else None
            body = fmt.completion_response(req.request_id, model, text, finish, lp, usage)
        choices.append({**body["choices"][0], "index": index})
    body["choices"] = choices
    return fmt.JSONBody(body)


async def _collect_watching(agen: AsyncIterator[Indexed], first: Indexed,
                            request: Request) -> list[Indexed] | None:
    async def collect() -> list[Indexed]:
        items = [first]  # one choice finishing is not the end: read until every one has
        async for item in agen:
            items.append(item)
        return items

    items = await watching(collect(), request)
    if items is None:
        await agen.aclose()
    return items


async def _stream(agen: AsyncIterator[Indexed], first: Indexed, req: GenerateRequest,
                  model: str, kind: str, n: int, include_usage: bool, continuous_usage: bool,
                  want_logprobs: bool, vocab):
    created = int(time.time())
    rid = req.request_id
    prompt_tokens = len(req.prompt_token_ids)
    cached = first[1].num_cached_tokens
    completion_tokens = 0
    offsets = [0] * n

    def with_usage(data: dict) -> dict:
        if continuous_usage:
            data["usage"] = fmt.usage(prompt_tokens, completion_tokens, cached)
        return data

    def indexed(data: dict, index: int) -> dict:
        data["choices"][0]["index"] = index
        return with_usage(data)

    if kind == "chat":
        for index in range(n):
            yield fmt.sse(indexed(fmt.chat_chunk(rid, model, created,
                                                 {"role": "assistant", "content": ""}), index))

    def chunk(index: int, event: TokenEvent) -> dict:
        if kind == "chat":
            lp = fmt.chat_logprobs(event.logprobs, vocab) if want_logprobs else None
            delta = {"content": event.text} if event.text or not event.finish_reason else {}
            return indexed(fmt.chat_chunk(rid, model, created, delta, event.finish_reason, lp),
                           index)
        lp = (fmt.completion_logprobs(event.logprobs, vocab, offsets[index])
              if want_logprobs else None)
        offsets[index] += len(event.text)
        return indexed(fmt.completion_chunk(rid, model, created, event.text,
                                            event.finish_reason, lp), index)

    try:
        item = first
        while True:
            index, event = item
            completion_tokens += len(event.token_ids)
            yield fmt.sse(chunk(index, event))
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                break
        if include_usage:
            usage = fmt.usage(prompt_tokens, completion_tokens, cached)
            make = fmt.chat_usage_chunk if kind == "chat" else fmt.completion_usage_chunk
            yield fmt.sse(make(rid, model, created, usage))
    except (UpstreamError, BadRequestError, NoWorkersError) as e:
        yield fmt.sse({"error": {"message": str(e), "type": "server_error", "param": None,
                                 "code": None}})
    finally:
        await agen.aclose()
    yield LastChunk(fmt.SSE_DONE)
