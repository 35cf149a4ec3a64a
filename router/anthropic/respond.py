"""A chat job's output in Anthropic's shapes: the message body (text, thinking and tool_use
blocks, stop_reason, usage) and the SSE event sequence (message_start, then per block
content_block_start / _delta / _stop, message_delta with the stop reason and usage,
message_stop)."""

from __future__ import annotations

import json
import uuid

import orjson
from fastapi import Request

from router.anthropic.errors import error_body
from router.chat_output import OutputShaper
from router.dispatcher import BadRequestError, NoWorkersError, UpstreamError
from router.openai_format import JSONBody
from router.output_deltas import CallArgs, CallStart, Content, Delta, Reasoning
from router.respond import _Body, _collect_watching, _prime
from router.streaming import ClosingStreamingResponse, LastChunk
from router.token_events import TokenEvent


def stop_reason(shaper: OutputShaper, finish: str | None, last_token: int | None,
                eos_id: int | None, stops: list[str]) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence). A stop that did not end on EOS ended on a stop string;
    which one is known only when there was one."""
    reason = shaper.finish_reason(finish)
    if reason == "tool_calls":
        return "tool_use", None
    if reason == "length":
        return "max_tokens", None
    if reason == "stop" and stops and last_token is not None and last_token != eos_id:
        return "stop_sequence", stops[0] if len(stops) == 1 else None
    return ("end_turn" if reason else None), None


def _input(arguments: str):
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {"input_tokens": prompt, "output_tokens": completion,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def message_body(msg_id: str, model: str, shaper: OutputShaper, reason, usage: dict) -> dict:
    content: list[dict] = []
    if shaper.reasoning:
        content.append({"type": "thinking", "thinking": shaper.reasoning, "signature": ""})
    if shaper.content:
        content.append({"type": "text", "text": shaper.content})
    for c in shaper.calls:
        content.append({"type": "tool_use", "id": c["id"], "name": c["name"],
                        "input": _input(c["arguments"])})
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason[0], "stop_sequence": reason[1],
            "usage": usage}


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _Blocks:
    """Opens and closes content blocks as the parts of the output change kind."""

    def __init__(self):
        self.index = -1
        self.open: tuple | None = None  # (kind, call index)

    def events(self, d: Delta) -> list[bytes]:
        kind = ("text" if isinstance(d, Content) else "thinking" if isinstance(d, Reasoning)
                else "tool_use")
        key = (kind, d.index if isinstance(d, (CallStart, CallArgs)) else None)
        out = []
        if isinstance(d, CallStart) or self.open != key:
            out += self.close()
            self.index += 1
            self.open = key
            block = ({"type": "text", "text": ""} if kind == "text" else
                     {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                     else {"type": "tool_use", "id": d.id, "name": d.name, "input": {}})
            out.append(sse("content_block_start", {"type": "content_block_start",
                                                   "index": self.index, "content_block": block}))
            if isinstance(d, CallStart):
                return out
        delta = ({"type": "text_delta", "text": d.text} if kind == "text" else
                 {"type": "thinking_delta", "thinking": d.text} if kind == "thinking" else
                 {"type": "input_json_delta", "partial_json": d.text})
        out.append(sse("content_block_delta", {"type": "content_block_delta",
                                               "index": self.index, "delta": delta}))
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]


async def respond_messages(state, request: Request, job, model: str, stream: bool, slot,
                           stops: list[str]):
    req, shaper = job.req, job.shaper
    msg_id = "msg_" + uuid.uuid4().hex[:24]
    eos_id = state.model.tokenizer.eos_token_id if state.model.tokenizer else None
    agen = state.dispatcher.generate(req)
    try:
        first = await _prime(state, agen, request)
    except BaseException:
        slot.release()
        raise
    prompt_len = len(req.prompt_token_ids)
    if stream:
        body = _stream(agen, first, msg_id, model, shaper, prompt_len, eos_id, stops)
        return ClosingStreamingResponse(_Body(body, agen, slot), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache"})
    try:
        events = await _collect_watching(agen, first, request)
    finally:
        slot.release()
    if events is None:
        return JSONBody(error_body(499, "client disconnected"), status_code=499)
    shaper.feed("".join(e.text for e in events), final=True)
    ids = [t for e in events for t in e.token_ids]
    finish = next((e.finish_reason for e in reversed(events) if e.finish_reason), None)
    reason = stop_reason(shaper, finish, ids[-1] if ids else None, eos_id, stops)
    usage = _usage(prompt_len, len(ids), events[0].num_cached_tokens)
    return JSONBody(message_body(msg_id, model, shaper, reason, usage))


async def _stream(agen, first: TokenEvent, msg_id: str, model: str, shaper: OutputShaper,
                  prompt_len: int, eos_id: int | None, stops: list[str]):
    start = message_body(msg_id, model, OutputShaper(), (None, None),
                         _usage(prompt_len, 0, first.num_cached_tokens))
    yield sse("message_start", {"type": "message_start", "message": start})
    blocks = _Blocks()
    tokens, last, finish = 0, None, None
    try:
        event = first
        while True:
            tokens += len(event.token_ids)
            last = event.token_ids[-1] if event.token_ids else last
            for d in shaper.feed(event.text, final=bool(event.finish_reason)):
                for chunk in blocks.events(d):
                    yield chunk
            if event.finish_reason:
                finish = event.finish_reason
                break
            try:
                event = await agen.__anext__()
            except StopAsyncIteration:
                for d in shaper.feed("", final=True):
                    for chunk in blocks.events(d):
                        yield chunk
                break
    except (UpstreamError, BadRequestError, NoWorkersError) as e:
        yield sse("error", error_body(500, str(e)))
        await agen.aclose()
        return
    finally:
        await agen.aclose()
    reason, sequence = stop_reason(shaper, finish, last, eos_id, stops)
    # The closing events in one write, with the response's end (router/streaming.py).
    yield LastChunk(b"".join([
        *blocks.close(),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": reason, "stop_sequence": sequence},
                              "usage": {"output_tokens": tokens}}),
        sse("message_stop", {"type": "message_stop"})]))
