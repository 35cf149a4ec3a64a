"""The router's end of the decode output plane: one ``Outputs`` stream per decode worker,
read by one task that sorts each ``OutputBatch`` into per-request inboxes.

A worker sends one batch per engine step for all of this router's requests there, so a step
costs the router one gRPC message and one wake-up of the reader, plus one wake-up per request
whose inbox was empty (its consumer gets everything queued at once). The stream opens on the
first request for a worker and stays open; when it ends (the worker died, its connection
broke), every inbox on it fails with ``OutputsLost`` and the dispatcher moves those requests
to another worker. The next request for that worker opens a new stream.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import grpc

from proto import API_VERSION, pb, pb_grpc

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_S = 10.0  # a worker that does not register the stream by then is not serving


class OutputsLost(Exception):
    """The worker's Outputs stream ended before the request finished (or a deadline passed)."""


class RequestInbox:
    """One request's outputs as they arrive, taken all at once by its consumer."""

    __slots__ = ("owner", "_items", "_waiter", "_lost")

    def __init__(self, owner: dict[str, RequestInbox]) -> None:
        self.owner = owner  # the stream's inboxes by request id, this one among them
        self._items: list[pb.RequestOutput] = []
        self._waiter: asyncio.Future | None = None
        self._lost: str | None = None

    def push(self, output: pb.RequestOutput) -> None:
        self._items.append(output)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, reason: str) -> None:
        self._lost = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, deadline: float) -> list[pb.RequestOutput]:
        """Every output queued so far (waiting for one if none); ``deadline``: loop time."""
        while not self._items:
            if self._lost is not None:
                raise OutputsLost(self._lost)
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items and self._lost is None and loop.time() >= deadline:
                raise OutputsLost("DEADLINE_EXCEEDED: no output before the request's deadline")
        items, self._items = self._items, []
        return items


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _WorkerStream:
    def __init__(self, address: str, stub: pb_grpc.WorkerStub, router_id: str,
                 counters: tuple | None):
        self.address = address
        self.inboxes: dict[str, RequestInbox] = {}
        self.ended = False
        self._counters = counters
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._call = stub.Outputs(pb.OutputsRequest(api_version=API_VERSION,
                                                    router_id=router_id))
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        reason = "the worker ended its Outputs stream"
        inboxes = self.inboxes
        try:
            async for batch in self._call:
                if not self.ready.done():
                    self.ready.set_result(None)  # the first (empty) batch: registered
                    continue
                tokens = 0
                for output in batch.outputs:
                    tokens += len(output.token_ids)
                    inbox = inboxes.get(output.request_id)
                    if inbox is not None:  # else: cancelled here, its abort finish arriving
                        inbox.push(output)
                if self._counters is not None:
                    self._counters[0].inc()
                    self._counters[1].inc(tokens)
        except grpc.aio.AioRpcError as e:
            reason = f"{e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            reason = "the router is closing"
        finally:
            self.ended = True
            if not self.ready.done():
                self.ready.set_exception(OutputsLost(reason))
                self.ready.exception()  # retrieved: nobody else may be waiting
            for inbox in inboxes.values():
                inbox.fail(reason)
            if inboxes:
                log.warning("decode outputs from %s ended with %d requests open: %s",
                            self.address, len(inboxes), reason)

    def close(self) -> None:
        self._call.cancel()


class DecodeOutputs:
    """This router process's Outputs streams, one per decode worker address."""

    def __init__(self, stub_for: Callable[[str], pb_grpc.WorkerStub],
                 counters: tuple | None = None):
        """``counters``: (batches, tokens) Prometheus counters the readers increment."""
        self.router_id = f"router-{uuid.uuid4().hex[:12]}"
        self._stub_for = stub_for
        self._counters = counters
        self._streams: dict[str, _WorkerStream] = {}

    async def subscribe(self, address: str, request_id: str) -> RequestInbox:
        """An inbox for ``request_id``'s outputs from ``address``, registered before the
        request is submitted there (its first outputs may beat Submit's answer). Raises
        ``OutputsLost`` when the worker's stream cannot be opened."""
        stream = self._streams.get(address)
        if stream is None or stream.ended:
            stream = self._streams[address] = _WorkerStream(
                address, self._stub_for(address), self.router_id, self._counters)
        if not stream.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(stream.ready), _OPEN_TIMEOUT_S)
            except asyncio.TimeoutError:
                stream.close()
                raise OutputsLost(f"{address} did not open its Outputs stream") from None
        stream.ready.result()  # raises OutputsLost when it failed
        inbox = stream.inboxes[request_id] = RequestInbox(stream.inboxes)
        if stream.ended:  # ended between ready and now
            inbox.fail("the worker ended its Outputs stream")
        return inbox

    @staticmethod
    def unsubscribe(request_id: str, inbox: RequestInbox) -> None:
        if inbox.owner.get(request_id) is inbox:
            del inbox.owner[request_id]

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
        await asyncio.gather(*(s.task for s in streams), return_exceptions=True)
