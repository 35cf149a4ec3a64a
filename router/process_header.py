"""``x-pdserve-router-pid`` on every response: with several router processes on one port
(``--workers N``), which one answered. uvicorn writes it with its own default headers
(``Config(headers=...)``), so no ASGI middleware wraps every streamed chunk's send for it
(a pass per SSE write: ~2% of the router's CPU under streaming load, py-spy on this VM)."""

from __future__ import annotations

import os

HEADER = "x-pdserve-router-pid"


def process_headers() -> list[tuple[str, str]]:
    """uvicorn's extra response headers for this process."""
    return [(HEADER, str(os.getpid()))]
