"""The two completion routes without FastAPI's per-request machinery, for requests FastAPI
would accept as they are.

FastAPI's routing, dependency solving and body handling cost the router ~100 us of CPU per
request more than a plain ASGI handler doing the same validation and streaming response
(measured in process on the 2-core VM: 165 against 69 us); at ~1 ms of router CPU per streamed
chat request that is a tenth of it. This middleware sits inside the API-key and body-limit
middlewares and in front of FastAPI. For ``POST /v1/chat/completions`` and
``POST /v1/completions`` with a JSON body it parses and validates the body as FastAPI would
(``json.loads``, then the route's pydantic model in Python mode) and calls the route's handler
itself. Anything else, and any request whose body or key does not pass, goes to FastAPI with
its body replayed, so every refusal keeps FastAPI's error shapes by construction: this path
only ever serves requests that FastAPI would have handed to the same handler. Two refusals
are its own: a body that is not JSON by its Content-Type (415, saying so), and a body over
``OFF_LOOP_BODY_BYTES`` that fails in the thread that parsed it (the 400 FastAPI's handlers
would give, without a second parse on the event loop).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from router.body_limit import replaying
from router.errors import APIError, bad_request
from router.request_validation import validation_error

# Bodies larger than this are parsed and validated in a thread: a 7 MB body of 250,000
# content parts took ~0.5 s of the event loop (every stream stalled behind it); in a thread
# the GIL's switch interval (5 ms) lets the loop run in between. Small bodies stay inline,
# where the thread hop (~0.1 ms) would cost more than the parse.
OFF_LOOP_BODY_BYTES = 256 << 10

# (body, request, api key) -> the response; the function the FastAPI route calls too
Handler = Callable[[BaseModel, Request, "str | None"], Awaitable]
KeyOf = Callable[[dict], "tuple[bool, str | None]"]  # scope -> (accepted, api key)


class CompletionFastPath:
    def __init__(self, app, routes: dict[str, tuple[type[BaseModel], Handler]], key_of: KeyOf):
        """``routes``: path -> (body model, handler) of POST routes served here; ``key_of``:
        the route's key check on the scope (not accepted: FastAPI answers)."""
        self.app = app
        self.routes = routes
        self.key_of = key_of

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        kind = _content_type(scope)
        if kind is not None and not _is_json(kind):
            # FastAPI would not read it as JSON and would answer "Input should be a valid
            # dictionary", which names neither the body nor its type.
            return await _refused_media_type(kind).response()(scope, receive, send)
        body, more = await _read_body(receive)
        replay = replaying(body, receive)
        model, handler = route
        accepted, api_key = self.key_of(scope)
        try:
            if not accepted or more:
                parsed = None
            elif len(body) > OFF_LOOP_BODY_BYTES:
                parsed = await asyncio.to_thread(_parsed_or_refused, model, body)
            else:
                parsed = _parsed(model, body)
        except APIError as e:  # a large body refused off the loop, in FastAPI's words
            return await e.response()(scope, replay, send)
        if parsed is None:  # FastAPI refuses it, in its own words
            return await self.app(scope, replay, send)
        request = Request(scope, replay)
        try:
            response = await handler(parsed, request, api_key)
        except APIError as e:  # as the app's APIError handler answers on OpenAI routes
            response = e.response()
        await response(scope, replay, send)


def _content_type(scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return None


def _is_json(kind: str) -> bool:
    """Whether FastAPI reads a body of this type as JSON (no type at all it also does)."""
    return kind == "application/json" or (kind.startswith("application/")
                                          and kind.endswith("+json"))


def _refused_media_type(kind: str) -> APIError:
    shown = kind[:64].encode("ascii", "backslashreplace").decode("ascii")
    return APIError(415, f"the request body must be JSON, sent with Content-Type: "
                    f"application/json (got {shown!r})", code="unsupported_media_type")


async def _read_body(receive) -> tuple[bytes, bool]:
    """The whole body (the body-limit middleware outside has buffered it already), and whether
    the client left before it ended."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _parsed_or_refused(model: type[BaseModel], body: bytes) -> BaseModel:
    """``_parsed`` for a body too large to parse twice: refused here in the words FastAPI's
    handlers would use (router/app.py), instead of handed to FastAPI to parse again on the
    loop."""
    if not body:
        raise bad_request("the request body is not valid JSON")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error([{**err, "loc": ("body", *err["loc"])}
                                for err in e.errors()]) from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None


def _parsed(model: type[BaseModel], body: bytes) -> BaseModel | None:
    try:
        return _parsed_or_refused(model, body)
    except Exception:  # bad JSON, a ValidationError, RecursionError on deep nesting...: FastAPI
        return None    # answers each its own way (400 for a body it cannot parse at all)
