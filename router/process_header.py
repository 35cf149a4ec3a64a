"""``x-pdserve-router-pid`` on every response: with several router processes on one port
(``--workers N``), which one answered. A pure ASGI middleware (Starlette's BaseHTTPMiddleware
would add a task and a queue per request)."""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-pdserve-router-pid"


class ProcessHeaderMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self._header = (HEADER.encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header]
            await send(message)

        await self.app(scope, receive, send_with_pid)
