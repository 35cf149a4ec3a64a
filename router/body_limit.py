"""Refuse request bodies over a size limit with 413, before anything parses them.

The body is read here, up to the limit, and handed on whole: an error raised from inside the
app's ``receive`` would be caught by FastAPI's body parsing and become a 400, so a chunked body
(no Content-Length) over the limit must be refused before the app runs. The app reads the whole
body anyway, so buffering it here costs no extra memory."""

from __future__ import annotations

import json


def replaying(body: bytes, receive):
    """An ASGI ``receive`` that hands on ``body`` whole, already read from ``receive``, then
    ``receive``'s own messages (http.disconnect, when the client leaves)."""
    delivered = False

    async def replay():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                return await self._reject(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _reject(self, send) -> None:
        body = json.dumps({"error": {
            "message": f"request body exceeds the limit of {self.max_bytes} bytes",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
