"""The router's end of the workers' output plane: one stream per worker, sorting each
``OutputBatch`` into per-request inboxes (and prefill answers to their callers).

A worker sends one batch per engine step for all of this router's requests there, so a step
costs the router one message, plus one wake-up per request whose inbox was empty (its consumer
gets everything queued at once). The stream is the worker's outputs socket when its record
names one (proto/frames.py: frames parsed straight off the socket, the cheaper carrier), else
its gRPC ``Outputs`` call. It opens on the first request for a worker and stays open; when it
ends (the worker died, its connection broke), every inbox on it fails with ``OutputsLost`` and
the dispatcher moves those requests to another worker. The next request for that worker opens
a new stream.

Submissions and prefills go the same way when they can: a frame on the worker's outputs socket
(its registration batch says whether it takes them; a prefill worker's socket carries only
those), whose answer comes back on the same connection: a submission's refusal as the request's
output, a prefill's ``PrefillResult``. Else the Submit and Prefill calls.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from proto import API_VERSION, pb, pb_grpc
from proto.frames import FrameError, FrameReader, frame, tune_socket
from router.request_inbox import CallRefused, OutputsLost, RequestInbox

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_S = 10.0  # a worker that does not register the stream by then is not serving


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(CallRefused("DEADLINE_EXCEEDED", "no prefill answer in time"))


class _Stream:
    """One decode worker's outputs for this router: the inboxes of its requests there, and
    how the stream ends. Subclasses carry the batches (gRPC call or outputs socket)."""

    def __init__(self, address: str, counters: tuple | None):
        self.address = address
        self.inboxes: dict[str, RequestInbox] = {}
        self.prefills: dict[str, asyncio.Future] = {}  # socket prefills awaiting their answer
        self.ended = False
        self._counters = counters
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()  # set by the first (empty) batch
        self.finished: asyncio.Future = loop.create_future()  # set once it has ended

    def _deliver(self, batch: pb.OutputBatch) -> None:
        tokens = 0
        inboxes = self.inboxes
        for output in batch.outputs:
            tokens += len(output.token_ids)
            inbox = inboxes.get(output.request_id)
            if inbox is not None:  # else: cancelled here, its abort finish arriving
                inbox.push(output)
        if self._counters is not None:
            self._counters[0].inc()
            self._counters[1].inc(tokens)

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.ready.done():
            self.ready.set_exception(OutputsLost(reason))
            self.ready.exception()  # retrieved: nobody else may be waiting
        inboxes = self.inboxes
        for inbox in inboxes.values():
            inbox.fail(reason)
        for waiter in self.prefills.values():
            if not waiter.done():
                waiter.set_exception(CallRefused("UNAVAILABLE", reason))
        if inboxes:
            log.warning("decode outputs from %s ended with %d requests open: %s",
                        self.address, len(inboxes), reason)
        self.finished.set_result(None)

    def close(self) -> None:
        raise NotImplementedError


class _GrpcStream(_Stream):
    """The ``Outputs`` server-streaming call: for workers without an outputs socket."""

    def __init__(self, address: str, stub: pb_grpc.WorkerStub, router_id: str,
                 counters: tuple | None):
        super().__init__(address, counters)
        self._call = stub.Outputs(pb.OutputsRequest(api_version=API_VERSION,
                                                    router_id=router_id))
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        reason = "the worker ended its Outputs stream"
        try:
            async for batch in self._call:
                if not self.ready.done():
                    self.ready.set_result(None)  # the first (empty) batch: registered
                    continue
                self._deliver(batch)
        except grpc.aio.AioRpcError as e:
            reason = f"{e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            reason = "the router is closing"
        finally:
            self._end(reason)

    def close(self) -> None:
        self._call.cancel()


class _SocketStream(_Stream, asyncio.Protocol):
    """The worker's outputs socket (proto/frames.py). Batches are parsed in the protocol's
    ``data_received``: every frame that arrived is delivered in one synchronous pass, with no
    task, future or thread hop per message (what grpc.aio costs per stream message).

    Frames for the worker (submissions, prefills) wait for the end of the event loop's pass
    and go out together, one socket write for every request that reached this worker in that
    pass. A write on this VM costs 15-55 us of CPU (waking the worker's process included);
    under load several requests share one, and a lone request is held back only until the
    callbacks already queued have run."""

    def __init__(self, address: str, outputs_address: str, router_id: str,
                 token: str | None, counters: tuple | None):
        super().__init__(address, counters)
        self.outputs_address = outputs_address
        self._hello = frame(pb.OutputsRequest(api_version=API_VERSION, router_id=router_id,
                                              token=token or "").SerializeToString())
        self._frames = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []  # frames of this pass of the loop, flushed at its end
        self.takes_submit = self.takes_prefill = False  # the registration batch says
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        host, _, port = self.outputs_address.rpartition(":")
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: self, host.strip("[]"), int(port))
        except asyncio.CancelledError:
            self._end("the router is closing")
        except (OSError, ValueError) as e:
            self._end(f"cannot connect to the outputs socket {self.outputs_address}: {e}")

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        tune_socket(transport.get_extra_info("socket"))
        transport.write(self._hello)

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self._frames.feed(data):
                batch = pb.OutputBatch.FromString(payload)
                if self.ready.done():
                    if batch.prefills:
                        self._answer(batch.prefills)
                    if batch.outputs:
                        self._deliver(batch)
                elif batch.refused:
                    self._end(f"the worker refused the outputs stream: {batch.refused}")
                    self._transport.close()
                    return
                else:  # the first (empty) batch: registered
                    self.takes_submit = batch.takes_submit
                    self.takes_prefill = batch.takes_prefill
                    self.ready.set_result(None)
        except (FrameError, DecodeError) as e:
            self._end(f"the outputs socket sent a bad frame: {e}")
            self._transport.close()

    def submit(self, request: pb.DecodeRequest) -> None:
        """One RouterFrame: no reply; what it comes to arrives in the request's inbox."""
        self._send(frame(pb.RouterFrame(submit=request).SerializeToString()))

    def prefill(self, request: pb.PrefillRequest) -> asyncio.Future:
        """One RouterFrame; the future gets its PrefillResult (or ``CallRefused`` when the
        stream ends first)."""
        loop = asyncio.get_running_loop()
        waiter = self.prefills[request.request_id] = loop.create_future()
        self._send(frame(pb.RouterFrame(prefill=request).SerializeToString()))
        return waiter

    def _send(self, data: bytes) -> None:
        self._unsent.append(data)
        if len(self._unsent) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if not self._transport.is_closing():  # else: connection_lost fails their requests
            self._transport.write(b"".join(unsent))

    def _answer(self, results) -> None:
        for result in results:
            waiter = self.prefills.pop(result.request_id, None)
            if waiter is not None and not waiter.done():  # else: given up on (cancelled)
                waiter.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the outputs connection broke: {exc}" if exc is not None
                  else "the worker closed its outputs connection")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # connection_lost ends the stream
        else:
            self._connecting.cancel()


class WorkerStreams:
    """This router process's streams to the workers' output planes, one per worker address:
    decode workers' token batches, and prefill workers' answers where their sockets take
    prefills."""

    def __init__(self, stub_for: Callable[[str], pb_grpc.WorkerStub],
                 counters: tuple | None = None, token: str | None = None):
        """``counters``: (batches, tokens) Prometheus counters the readers increment;
        ``token``: the cluster's token, which the outputs socket's hello carries."""
        self.router_id = f"router-{uuid.uuid4().hex[:12]}"
        self._stub_for = stub_for
        self._counters = counters
        self._token = token
        self._streams: dict[str, _Stream] = {}

    async def subscribe(self, address: str, request_id: str,
                        outputs_address: str = "") -> RequestInbox:
        """An inbox for ``request_id``'s outputs from the worker at ``address``, registered
        before the request is submitted there (its first outputs may beat Submit's answer).
        ``outputs_address``: the worker's outputs socket ("": it has none, so the gRPC
        stream). Raises ``OutputsLost`` when the worker's stream cannot be opened."""
        stream = await self._open(address, outputs_address)
        inbox = stream.inboxes[request_id] = RequestInbox(stream.inboxes)
        if stream.ended:  # ended between ready and now
            inbox.fail("the worker ended its Outputs stream")
        return inbox

    async def _open(self, address: str, outputs_address: str) -> _Stream:
        """The worker's open stream, opened now if there is none."""
        stream = self._streams.get(address)
        if stream is None or stream.ended:
            if outputs_address:
                stream = _SocketStream(address, outputs_address, self.router_id, self._token,
                                       self._counters)
            else:
                stream = _GrpcStream(address, self._stub_for(address), self.router_id,
                                     self._counters)
            self._streams[address] = stream
            log.info("outputs stream with %s: %s", address,
                     f"outputs socket {outputs_address}" if outputs_address else "gRPC stream")
        if not stream.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(stream.ready), _OPEN_TIMEOUT_S)
            except asyncio.TimeoutError:
                stream.close()
                raise OutputsLost(f"{address} did not open its Outputs stream") from None
        stream.ready.result()  # raises OutputsLost when it failed
        return stream

    async def submit(self, address: str, request: pb.DecodeRequest, timeout_s: float) -> None:
        """Submit ``request`` to the worker at ``address`` (subscribed first): a frame on its
        outputs socket when the worker takes them there, else the Submit call (``timeout_s``).
        Raises ``CallRefused`` for the call's refusals; the socket's arrive from ``take``.
        A stream that ended meanwhile fails the inbox: nothing is sent."""
        stream = self._streams.get(address)
        if isinstance(stream, _SocketStream) and stream.takes_submit:
            if not stream.ended:
                stream.submit(request)
            return
        try:
            await self._stub_for(address).Submit(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise CallRefused(e.code().name, e.details()) from None

    async def prefill(self, address: str, outputs_address: str, request: pb.PrefillRequest,
                      timeout_s: float) -> pb.PrefillResponse:
        """Prefill ``request`` on the worker at ``address``: a frame on its outputs socket
        when it takes them there, else the Prefill call. Raises ``CallRefused`` (a stream that
        could not open or broke: UNAVAILABLE; no answer within ``timeout_s``:
        DEADLINE_EXCEEDED)."""
        if outputs_address:
            try:
                stream = await self._open(address, outputs_address)
            except OutputsLost as e:
                raise CallRefused("UNAVAILABLE", str(e)) from None
            if isinstance(stream, _SocketStream) and stream.takes_prefill and not stream.ended:
                return await self._prefill_on_socket(stream, request, timeout_s)
        try:
            return await self._stub_for(address).Prefill(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise CallRefused(e.code().name, e.details()) from None

    @staticmethod
    async def _prefill_on_socket(stream: _SocketStream, request: pb.PrefillRequest,
                                 timeout_s: float) -> pb.PrefillResponse:
        waiter = stream.prefill(request)
        timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, waiter)
        try:
            result = await waiter
        finally:
            timer.cancel()
            if stream.prefills.get(request.request_id) is waiter:
                del stream.prefills[request.request_id]
        if result.error_code:
            raise CallRefused(result.error_code, result.error)
        return result.response

    @staticmethod
    def unsubscribe(request_id: str, inbox: RequestInbox) -> None:
        inbox.close()
        if inbox.owner.get(request_id) is inbox:
            del inbox.owner[request_id]

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
        await asyncio.gather(*(s.finished for s in streams), return_exceptions=True)
