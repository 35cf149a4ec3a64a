"""The decode worker's outputs socket (protocol: proto/frames.py): the same per-router streams
as the gRPC ``Outputs`` call, written as frames on a plain TCP connection.

Each connection says who it is in one frame (``OutputsRequest``: API version, router id, the
cluster token); a wrong one gets a ``refused`` batch naming the reason and is closed. From then
on the connection carries that router's stream until either side closes it. A write that finds
the socket full waits for it to drain, while the stream merges the steps produced meanwhile
into its next batch (worker/output_streams.py): a slow router gets fewer, larger frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable

from google.protobuf.message import DecodeError

from proto import API_VERSION, pb
from proto.auth import RefusalLog
from proto.frames import (
    HELLO_MAX_BYTES,
    HELLO_TIMEOUT_S,
    FrameError,
    FrameReader,
    frame,
    tune_socket,
)

log = logging.getLogger(__name__)

OpenStream = Callable[[str], AsyncIterator[pb.OutputBatch]]  # router id -> its batches


class OutputsSocket:
    def __init__(self, open_stream: OpenStream, token: str | None,
                 all_sent: Callable[[], bool] | None = None):
        """``open_stream(router_id)``: an async generator of that router's batches, the first
        one empty (registered), closed when the connection ends. ``token``: the cluster's
        gRPC token (None: --insecure, anyone may connect). ``all_sent()``: whether the
        streams have written everything pending (closing waits for it)."""
        self._open_stream = open_stream
        self._all_sent = all_sent
        self._token = token.encode() if token else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._refusals = RefusalLog("outputs connection")

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop listening and end every stream (requests still running are aborted). A drain
        ends with its last requests' finishes pending: they are written first (for up to
        ``grace_s``, as the gRPC server's stop grants its calls)."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while self._all_sent is not None and not self._all_sent() and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the writers take what they were woken for
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            tune_socket(writer.get_extra_info("socket"))
            try:
                hello = await asyncio.wait_for(_read_hello(reader), HELLO_TIMEOUT_S)
            except (asyncio.TimeoutError, FrameError, DecodeError, ConnectionError,
                    asyncio.IncompleteReadError) as e:
                self._refusals.note(f"no valid OutputsRequest ({type(e).__name__})")
                return
            reason = self._refusal(hello)
            if reason is not None:
                self._refusals.note(reason)
                writer.write(frame(pb.OutputBatch(refused=reason).SerializeToString()))
                return
            await self._serve(hello.router_id, reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, router_id: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        async def pump() -> None:
            async for batch in batches:
                writer.write(frame(batch.SerializeToString()))
                await writer.drain()  # waits only when the socket is full

        # The router sends nothing after its hello: a read that ends means it is gone, which
        # must end the stream now (and abort its requests), not at the next write.
        async with contextlib.aclosing(self._open_stream(router_id)) as batches:
            pumping = asyncio.ensure_future(pump())
            gone = asyncio.ensure_future(reader.read(1))
            try:
                await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (pumping, gone):
                    t.cancel()
                await asyncio.gather(pumping, gone, return_exceptions=True)

    def _refusal(self, hello: pb.OutputsRequest) -> str | None:
        if self._token is not None and not hmac.compare_digest(hello.token.encode(),
                                                               self._token):
            return ("wrong cluster token" if hello.token else "no cluster token") + \
                ": this worker accepts streams only from components holding the cluster secret"
        if hello.api_version != API_VERSION:
            return (f"api_version {hello.api_version} is not supported; this worker speaks "
                    f"{API_VERSION}")
        if not hello.router_id:
            return "router_id is required"
        return None


async def _read_hello(reader: asyncio.StreamReader) -> pb.OutputsRequest:
    frames = FrameReader(HELLO_MAX_BYTES)
    while True:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("closed before its OutputsRequest")
        payloads = frames.feed(data)
        if payloads:
            return pb.OutputsRequest.FromString(payloads[0])
