"""uvicorn's HTTP protocol with a response's head sent together with its first body chunk.

uvicorn's httptools protocol writes to the socket at every ASGI message: the status line and
headers on ``http.response.start``, then every body message on its own, so a streamed chat
response costs one socket write more than it needs, and on the VMs this router runs on a
write costs 15-55 us of CPU, most of it waking the reader (benchmarks/results/README.md,
session 10). Here the head is held until the first body chunk and leaves with it; if none
follows in the same event-loop pass, it leaves at the end of the pass (``call_soon``). Every
other write goes to the socket at once, so a token is never held back behind the rest of the
pass.

Session 11 held every write to the end of the pass instead, joined per connection. On a busy
loop that saved a little more, but a write then waited for whatever else the pass did, 68 us
at the median and 180 at p90 at one client, and the streamed request's latency grew by
0.4-1 ms. Side by side on the 2-core VM (session 12, five alternating rounds each, the router
alone on a core): one client's p50 3.86 -> 2.91 ms and 3,008 -> 2,416 us of router CPU a
request against holding every write; at 64 clients 1,424 against 1,430 us a request (the VM's
spread between rounds was ~40%).

Everything else is the real transport's: flow control (uvicorn watches the real transport's
buffer), ``close`` (which sends a held head first), ``get_extra_info``, reading.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadJoiningTransport:
    """A transport that holds a response's head for its first body chunk."""

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        # uvicorn writes a head in one piece, starting with its status line; a chunk of a
        # chunked body starts with its hex size. A Content-Length body that happens to start
        # so is held until the next write or the end of the pass, still in order.
        if self._head is None and data.startswith(b"HTTP/"):
            self._head = data
            self._loop.call_soon(self.flush)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        """Send a head still held (its response had no body chunk in the same pass)."""
        if self._head is not None:
            data, self._head = self._head, None
            if not self._transport.is_closing():  # the peer left: nobody to write to
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class HeadJoiningHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=...)``: uvicorn's httptools protocol writing through
    ``HeadJoiningTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Requests take the protocol's transport when their headers are parsed, after this.
        self.transport = HeadJoiningTransport(transport, self.loop)
