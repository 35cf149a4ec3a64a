"""The decode role's output plane: one ``Outputs`` stream per router process, carrying the
outputs of all of that router's requests as one ``OutputBatch`` per engine step.

The engine thread hands each stream one step's deltas in one event-loop wake-up
(``OutputStream.put``, an ``engine.async_engine.OutputSink``); the stream's writer turns
everything pending into one batch. A writer that falls behind (a slow router, a full socket)
sends several steps in its next batch instead of queueing messages. When a stream ends (the
router left or its connection broke), its requests are aborted: nothing keeps running, or
holding blocks, for a router that cannot hear the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.async_engine import AsyncEngine
from engine.llm_engine import RequestDelta
from proto import pb
from proto.convert import logprob_to_pb
from worker.state import WorkerState


class OutputStream:
    """One router's stream: its requests in flight here and the deltas not yet sent."""

    def __init__(self, router_id: str, streams: OutputStreams):
        self.router_id = router_id
        self.loop = asyncio.get_running_loop()
        self._streams = streams
        self.requests: set[str] = set()  # submitted here, not finished yet
        self._pending: list[RequestDelta] = []
        self._wake = asyncio.Event()
        self.closed = False

    def add(self, request_id: str) -> None:
        """``request_id`` was submitted for this stream (before the engine took it, so that a
        finish arriving at once finds it)."""
        self.requests.add(request_id)
        self._streams.state.in_flight += 1  # draining waits for it

    def forget(self, request_id: str) -> None:
        if request_id in self.requests:
            self.requests.discard(request_id)
            self._streams.state.in_flight -= 1

    def put(self, deltas: list[RequestDelta]) -> None:
        """One step's deltas of this stream's requests (runs on the event loop)."""
        for delta in deltas:
            if delta.finished:
                self.forget(delta.request_id)
        if not self.closed:
            self._pending.extend(deltas)
            self._wake.set()

    async def batches(self) -> AsyncIterator[pb.OutputBatch]:
        """Everything pending as one batch, as soon as there is something."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            deltas, self._pending = self._pending, []
            if deltas:
                batch = pb.OutputBatch(outputs=[_to_pb(d) for d in deltas])
                self._streams.batches_sent += 1
                self._streams.tokens_sent += sum(len(d.new_token_ids) for d in deltas)
                yield batch


class OutputStreams:
    """The open streams by router id, and what they have carried (for Stats)."""

    def __init__(self, engine: AsyncEngine, state: WorkerState):
        self.engine = engine
        self.state = state
        self._by_router: dict[str, OutputStream] = {}
        self.num_open = 0
        self.batches_sent = 0
        self.tokens_sent = 0

    def open(self, router_id: str) -> OutputStream:
        """A new stream for ``router_id``; later submissions go to it. A stream it replaces
        keeps its requests until it ends itself (the router may still be reading it)."""
        stream = self._by_router[router_id] = OutputStream(router_id, self)
        self.num_open += 1
        return stream

    async def serve(self, router_id: str) -> AsyncIterator[pb.OutputBatch]:
        """One router's stream, whatever carries it (the gRPC ``Outputs`` call or the outputs
        socket): an empty batch once registered (Submit may name this router from then on),
        then its batches; when the carrier ends (the router left, its connection broke, the
        server stops), its requests end here."""
        stream = self.open(router_id)
        try:
            yield pb.OutputBatch()
            async for batch in stream.batches():
                yield batch
        finally:
            self.close(stream)

    def all_sent(self) -> bool:
        """Nothing waits to be written on any open stream (a drain's last finishes left)."""
        return not any(stream._pending for stream in self._by_router.values())

    def get(self, router_id: str) -> OutputStream | None:
        return self._by_router.get(router_id)

    def close(self, stream: OutputStream) -> None:
        """The stream ended: abort its requests (their sinks get the abort finish, which
        settles the in-flight count)."""
        stream.closed = True
        self.num_open -= 1
        if self._by_router.get(stream.router_id) is stream:
            del self._by_router[stream.router_id]
        for request_id in list(stream.requests):
            self.engine.abort(request_id)


def _to_pb(delta: RequestDelta) -> pb.RequestOutput:
    out = pb.RequestOutput(request_id=delta.request_id, token_ids=delta.new_token_ids,
                           text=delta.text_delta, num_prompt_tokens=delta.num_prompt_tokens,
                           num_cached_tokens=delta.num_cached_tokens)
    if delta.new_logprobs:
        out.logprobs.extend(logprob_to_pb(lp) for lp in delta.new_logprobs)
    if delta.finished:
        out.finish_reason = delta.finish_reason.value
        if delta.finish_reason.value == "error":
            out.error = delta.error or "request failed"
    return out
