"""uvicorn's HTTP protocol with a connection's writes joined per event-loop pass.

uvicorn's httptools protocol writes to the socket at every ASGI message: the status line and
headers on ``http.response.start``, then every body message on its own. A streamed chat
response is three writes or more (the headers, the first chunk that follows them in the same
pass, then the last chunk with the chunked terminator), and on the VMs this router runs on a
socket write costs 15-55 us of CPU, most of it waking the reader (benchmarks/results/README.md,
session 10). Here the protocol's transport collects what one pass of the event loop writes to
a connection and hands it to the real transport once, at the end of that pass (``call_soon``):
the bytes and their order are the same, the headers and the first chunk leave in one segment,
and so does a whole response whose tokens have all arrived.

Everything else is the real transport's: flow control (uvicorn watches the real transport's
buffer), ``close`` (which sends what is pending first), ``get_extra_info``, reading.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class PassCoalescingTransport:
    """A transport whose ``write`` is deferred to the end of the event-loop pass, joined with
    the pass's other writes to the same connection."""

    __slots__ = ("_transport", "_loop", "_pending", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():  # the peer left: nobody to write to
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=...)``: uvicorn's httptools protocol writing through
    ``PassCoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Requests take the protocol's transport when their headers are parsed, after this.
        self.transport = PassCoalescingTransport(transport, self.loop)
