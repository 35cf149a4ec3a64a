"""uvicorn's HTTP protocol with a connection's writes joined where that pays.

uvicorn's httptools protocol writes to the socket at every ASGI message: the status line and
headers on ``http.response.start``, then every body message on its own, and on the VMs this
router runs on a socket write costs 15-55 us of CPU, most of it waking the reader
(benchmarks/results/README.md, session 10). Here:

- a response's head is held for its first body chunk and leaves with it (if no chunk follows
  in the same event-loop pass, at the end of the pass, ``call_soon``);
- in a pass where other connections already wait for the pass's end (a busy router: many
  streams' tokens handled in one pass), a write waits too, joined with the connection's other
  writes of that pass;
- otherwise a write goes to the socket at once.

Session 11 held every write to the end of the pass. At one client a write then waited for
whatever else the pass did (68 us at the median, 180 at p90, measured in the transport) and a
streamed request's latency grew. benchmarks/router_bench.py --repeats 5 on the 2-core VM
(router alone on a core; session 12, benchmarks/results/router_s12_pinned.json), medians,
this against session 11's: one client 2,020 vs 2,660 us of router CPU a request, added p50
1.10 vs 1.58 ms; 64 clients 1,210 vs 1,353 us a request, 824 vs 732 req/s (round by round
mixed at 64: the VM's spread between rounds was ~30%). Holding only the head: 2,020 us and
1.09 ms at one client, 1,339 us at 64.

Everything else is the real transport's: flow control (uvicorn watches the real transport's
buffer), ``close`` (which sends what is held first), ``get_extra_info``, reading.
"""

from __future__ import annotations

import asyncio
import weakref

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _EndOfPass:
    """The connections of one event loop whose writes wait for the end of the current pass."""

    __slots__ = ("_loop", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # a strong one would keep _PASSES's key alive
        self.waiting: list[HeadJoiningTransport] = []

    def enlist(self, transport: HeadJoiningTransport) -> None:
        if not self.waiting:
            self._loop().call_soon(self._flush_all)
        self.waiting.append(transport)

    def _flush_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for transport in waiting:
            transport.flush()


# One per event loop, gone with it (tests and benchmarks run many loops in one process).
_PASSES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EndOfPass] = \
    weakref.WeakKeyDictionary()


class HeadJoiningTransport:
    """A transport that holds a response's head for its first body chunk, and, in a pass
    where other connections already wait for the pass's end, joins them."""

    __slots__ = ("_transport", "_pass", "_pending", "_enlisted")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._pass = _PASSES.get(loop)
        if self._pass is None:
            self._pass = _PASSES[loop] = _EndOfPass(loop)
        self._pending: list[bytes] = []
        self._enlisted = False

    def write(self, data: bytes) -> None:
        # uvicorn writes a head in one piece, starting with its status line; a chunk of a
        # chunked body starts with its hex size. A Content-Length body that happens to start
        # so is held until the next write or the end of the pass, still in order.
        if not self._pending and data.startswith(b"HTTP/"):
            self._pending.append(data)
            self._enlist()
        elif len(self._pass.waiting) > self._enlisted:  # others wait: a busy pass
            self._pending.append(data)
            self._enlist()
        elif self._pending:  # only this connection's head waits: it leaves with this chunk
            self._pending.append(data)
            self._send()
        else:
            self._transport.write(data)

    def _enlist(self) -> None:
        if not self._enlisted:
            self._enlisted = True
            self._pass.enlist(self)

    def _send(self) -> None:
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self._transport.is_closing():  # the peer left: nobody to write to
            self._transport.write(data)

    def flush(self) -> None:
        """The end of the pass (or a close): send what is held."""
        self._enlisted = False
        if self._pending:
            self._send()

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
