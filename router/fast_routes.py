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
only ever serves requests that FastAPI would have handed to the same handler.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request

from router.body_limit import replaying
from router.errors import APIError

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
        if route is None or scope["method"] != "POST" or not _json_body(scope):
            return await self.app(scope, receive, send)
        body, more = await _read_body(receive)
        replay = replaying(body, receive)
        model, handler = route
        accepted, api_key = self.key_of(scope)
        parsed = _parsed(model, body) if accepted and not more else None
        if parsed is None:  # FastAPI refuses it, in its own words
            return await self.app(scope, replay, send)
        request = Request(scope, replay)
        try:
            response = await handler(parsed, request, api_key)
        except APIError as e:  # as the app's APIError handler answers on OpenAI routes
            response = e.response()
        await response(scope, replay, send)


def _json_body(scope) -> bool:
    """Whether FastAPI would read this body as JSON: no content type, or application/json
    or application/*+json."""
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            kind = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return kind == "application/json" or (kind.startswith("application/")
                                                   and kind.endswith("+json"))
    return True


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


def _parsed(model: type[BaseModel], body: bytes) -> BaseModel | None:
    if not body:
        return None
    try:
        return model.model_validate(json.loads(body))
    except Exception:  # bad JSON, a ValidationError, RecursionError on deep nesting...: FastAPI
        return None    # answers each its own way (400 for a body it cannot parse at all)
