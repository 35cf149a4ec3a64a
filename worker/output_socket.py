"""The decode worker's outputs socket (protocol: proto/frames.py): the same per-router streams
as the gRPC ``Outputs`` call, written as frames on a plain TCP connection.

Each connection says who it is in one frame (``OutputsRequest``: API version, router id, the
cluster token); a wrong one gets a ``refused`` batch naming the reason and is closed. From then
on the connection carries that router's stream until either side closes it. A write that finds
the socket full waits for it to drain, while the stream merges the steps produced meanwhile
into its next batch (worker/output_streams.py): a slow router gets fewer, larger frames.

The other way, the router may send requests as ``RouterFrame`` frames: submissions (when
``submit`` is given; the registration batch says ``takes_submit``) and prefills (``prefill``;
``takes_prefill``). A unary call costs the router ~140-270 us of CPU in grpc.aio (measured on
the 2-core VM, 64 and 1 calls in flight), a frame a few. Each runs the servicer's method under
worker/call_refusal.py's context: a submission's refusal comes back as the request's error
output with ``error_code`` set, a prefill's answer or refusal as a ``PrefillResult``. A prefill
worker's socket carries only those: its stream has nothing but the registration batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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
from worker.call_refusal import Refused

log = logging.getLogger(__name__)

OpenStream = Callable[[str], AsyncIterator[pb.OutputBatch]]  # router id -> its batches
# (router id, request): submits it to that router's stream, or raises Refused
Submit = Callable[[str, pb.DecodeRequest], Awaitable[None]]
# (router id, request): the Prefill call's response, or raises Refused
Prefill = Callable[[str, pb.PrefillRequest], Awaitable[pb.PrefillResponse]]
_READ_BYTES = 1 << 16


class OutputsSocket:
    def __init__(self, open_stream: OpenStream, token: str | None,
                 all_sent: Callable[[], bool] | None = None, submit: Submit | None = None,
                 prefill: Prefill | None = None):
        """``open_stream(router_id)``: an async generator of that router's batches, the first
        one empty (registered), closed when the connection ends. ``token``: the cluster's
        gRPC token (None: --insecure, anyone may connect). ``all_sent()``: whether the
        streams have written everything pending (closing waits for it). ``submit`` /
        ``prefill``: take the connection's RouterFrame submissions / prefills (None: routers
        make the call)."""
        self._open_stream = open_stream
        # RouterFrame kind -> (the servicer's method, how its outcome is written back)
        self._handlers = {kind: (method, run) for kind, method, run in (
            ("submit", submit, self._run_submit), ("prefill", prefill, self._run_prefill))
            if method is not None}
        self._all_sent = all_sent
        self._token = token.encode() if token else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._closing = False
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
        self._closing = True
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
        except asyncio.CancelledError:
            # close() ends connections so. Ending the task without re-raising keeps Python
            # 3.11's start_server callback, which calls exception() on the finished handler
            # task, from logging the cancellation as "Exception in callback" at every stop.
            if not self._closing:
                raise
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, router_id: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        async def pump() -> None:
            first = True
            async for batch in batches:
                if first:  # the registration batch says what else this connection takes
                    batch.takes_submit = "submit" in self._handlers
                    batch.takes_prefill, first = "prefill" in self._handlers, False
                writer.write(frame(batch.SerializeToString()))
                await writer.drain()  # waits only when the socket is full

        # A read that ends means the router is gone, which must end the stream now (and
        # abort its requests), not at the next write.
        calls: set[asyncio.Task] = set()
        async with contextlib.aclosing(self._open_stream(router_id)) as batches:
            pumping = asyncio.ensure_future(pump())
            reading = asyncio.ensure_future(self._read_calls(router_id, reader, writer, calls))
            try:
                await asyncio.wait({pumping, reading}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (pumping, reading, *calls):  # a cancelled prefill aborts, as a call's
                    t.cancel()
                await asyncio.gather(pumping, reading, *calls, return_exceptions=True)

    async def _read_calls(self, router_id: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, calls: set[asyncio.Task]) -> None:
        """The router's frames until it closes; a frame that is not one ends the connection."""
        frames = FrameReader()
        while data := await reader.read(_READ_BYTES):
            try:
                received = [pb.RouterFrame.FromString(p) for p in frames.feed(data)]
            except (FrameError, DecodeError) as e:
                self._refusals.note(f"a bad frame from router {router_id} ({e})")
                return
            for call in received:
                kind = call.WhichOneof("call")
                if kind not in self._handlers:
                    self._refusals.note(f"a {kind or 'empty'} frame this worker does not take "
                                        f"from {router_id}")
                    return
                handler, run = self._handlers[kind]
                task = asyncio.ensure_future(run(handler, router_id, getattr(call, kind),
                                                 writer))
                calls.add(task)
                task.add_done_callback(calls.discard)

    @staticmethod
    async def _run_submit(submit: Submit, router_id: str, request: pb.DecodeRequest,
                          writer: asyncio.StreamWriter) -> None:
        _, refused = await _outcome(submit(router_id, request), "submission", request,
                                    router_id)
        if refused is not None:
            code, details = refused
            out = pb.RequestOutput(request_id=request.request_id, finish_reason="error",
                                   error=details, error_code=code)
            writer.write(frame(pb.OutputBatch(outputs=[out]).SerializeToString()))

    @staticmethod
    async def _run_prefill(prefill: Prefill, router_id: str, request: pb.PrefillRequest,
                           writer: asyncio.StreamWriter) -> None:
        response, refused = await _outcome(prefill(router_id, request), "prefill", request,
                                           router_id)
        result = pb.PrefillResult(request_id=request.request_id)
        if refused is None:
            result.response.CopyFrom(response)
        else:
            result.error_code, result.error = refused
        writer.write(frame(pb.OutputBatch(prefills=[result]).SerializeToString()))

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


def socket_for(servicer, role: str, token: str | None) -> OutputsSocket:
    """The outputs socket a role serves: decode roles their routers' output streams and
    submissions, roles that prefill (``prefill``, ``both``) prefills."""
    prefill = servicer.prefill_on_socket if role in ("prefill", "both") else None
    streams = getattr(servicer, "outputs", None)  # decode roles: their output plane
    if streams is None:
        return OutputsSocket(_registration_only, token, prefill=prefill)
    return OutputsSocket(streams.serve, token, streams.all_sent, servicer.submit_on_socket,
                         prefill)


async def _registration_only(router_id: str) -> AsyncIterator[pb.OutputBatch]:
    """A prefill worker's stream: registered, then nothing until the connection closes."""
    yield pb.OutputBatch()
    await asyncio.Event().wait()


async def _outcome(call: Awaitable, what: str, request, router_id: str) -> tuple:
    """(what ``call`` returned, None), or (None, (status code name, details)): what the gRPC
    call would have ended with."""
    try:
        return await call, None
    except Refused as e:
        return None, (e.code.name, e.details)
    except Exception as e:  # as gRPC answers an exception in a handler: UNKNOWN
        log.exception("%s of %s from %s failed", what, request.request_id, router_id)
        return None, ("UNKNOWN", f"{type(e).__name__}: {e}")


async def _read_hello(reader: asyncio.StreamReader) -> pb.OutputsRequest:
    frames = FrameReader(HELLO_MAX_BYTES)
    while True:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("closed before its OutputsRequest")
        payloads = frames.feed(data)
        if payloads:
            return pb.OutputsRequest.FromString(payloads[0])
