"""Response bodies and stream chunks exactly in OpenAI's shapes (chat and legacy completions)."""

from __future__ import annotations

import codecs
import time
from typing import Protocol

import orjson
from starlette.responses import Response

from common.outputs import TokenLogprob


class TokenVocab(Protocol):
    """How logprobs show a token (router/model_info.py's ModelInfo)."""

    def token_text(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


# orjson: one call from dict to UTF-8 bytes (json.dumps + str.encode: several times the CPU per chunk),
# and the bytes go to the socket as they are. Differences from json.dumps that matter here: it
# writes non-ASCII as UTF-8 (valid JSON, smaller), and a non-finite float as null (json.dumps
# writes -Infinity, which is not JSON).
def sse(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class JSONBody(Response):
    """A JSON response rendered by orjson. Returned from a route, it also skips FastAPI's
    ``jsonable_encoder`` walk over the body, which costs more than the encoding itself."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


# -- chat ---------------------------------------------------------------------------------------
def chat_logprobs(logprobs: list[TokenLogprob], vocab: TokenVocab) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        return {"token": vocab.token_text(token_id), "logprob": logprob,
                "bytes": list(vocab.token_bytes(token_id))}

    return {"content": [
        {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
        for lp in logprobs
    ]}


def chat_response(rid: str, model: str, message: dict, finish_reason: str | None,
                  logprobs: dict | None, usage_body: dict) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message,
                     "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": usage_body,
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
               logprobs: dict | None = None) -> dict:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
    }


def chat_usage_chunk(rid: str, model: str, created: int, usage_body: dict) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage_body}


# -- legacy completions -------------------------------------------------------------------------
def completion_logprobs(logprobs: list[TokenLogprob], vocab: TokenVocab, offset: int) -> dict:
    """``text_offset``: where each token's text starts in the choice's text, from ``offset``
    (the characters before these tokens). A token that ends inside a character adds none; the
    one completing it adds the character (an incremental UTF-8 decoder over their bytes)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    chars = codecs.getincrementaldecoder("utf-8")("replace")
    for lp in logprobs:
        tokens.append(vocab.token_text(lp.token_id))
        token_logprobs.append(lp.logprob)
        tops.append({vocab.token_text(t): v for t, v in lp.top} if lp.top else None)
        offsets.append(offset)
        offset += len(chars.decode(vocab.token_bytes(lp.token_id)))
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
            "text_offset": offsets}


def completion_response(rid: str, model: str, text: str, finish_reason: str | None,
                        logprobs: dict | None, usage_body: dict) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
        "usage": usage_body,
    }


def completion_chunk(rid: str, model: str, created: int, text: str,
                     finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
    }


def completion_usage_chunk(rid: str, model: str, created: int, usage_body: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage_body}
