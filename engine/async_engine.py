"""The engine behind an asyncio service: ``LLMEngine`` runs in its own thread, requests and
results cross over thread-safe queues.

The engine thread owns the engine outright (no locks around engine state): every call from the
event loop becomes a command the thread executes between steps. Results go to *sinks*: each
request names one, and each step hands every sink the deltas of all its requests in one
``call_soon_threadsafe`` (a decode worker's sink is one router's Outputs stream, so a step of 64
requests wakes the event loop once per router, not 64 times). ``generate`` and
``continue_prefilled`` wrap a one-request sink as an async iterator.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from engine.config import EngineConfig
from engine.core.kv_events import KVEvent
from engine.core.sequence import FinishReason
from engine.llm_engine import EngineStats, LLMEngine, RequestDelta

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # nothing to do: block on the command queue this long
_HOLDING_WAIT_S = 0.02  # leases or pulls outstanding: poll the transfer layer this often


class OutputSink(Protocol):
    """Where the deltas of some requests go: ``put`` runs on ``loop`` with one step's deltas
    of this sink's requests, in order."""

    loop: asyncio.AbstractEventLoop

    def put(self, deltas: list[RequestDelta]) -> None: ...


class _QueueSink:
    """One request's deltas (or the exception that refused it) on an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, deltas: list[RequestDelta]) -> None:
        for delta in deltas:
            self.queue.put_nowait(delta)


class AsyncEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.engine: LLMEngine | None = None
        self._commands: queue.Queue[Callable[[LLMEngine], None]] = queue.Queue()
        self._sinks: dict[str, OutputSink] = {}  # request id -> where its deltas go
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._startup_error: BaseException | None = None
        self.kv_events: deque[KVEvent] = deque()
        self._thread = threading.Thread(target=self._run, name="pdserve-engine", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (in the engine thread) and wait until it serves."""
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._startup_error is not None:
            raise self._startup_error

    def shutdown(self) -> None:
        self._stop.set()
        self._commands.put(lambda engine: None)  # wake the thread
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    # -- requests -----------------------------------------------------------------------------
    def generate(self, request_id: str, **add_kwargs: Any) -> AsyncIterator[RequestDelta]:
        """Run ``LLMEngine.add_request(request_id=..., **add_kwargs)``; stream its deltas."""
        return self._stream(request_id, self._adder(request_id, False, add_kwargs))

    def continue_prefilled(self, request_id: str, **kwargs: Any) -> AsyncIterator[RequestDelta]:
        """Run ``LLMEngine.add_prefilled_request``; stream its deltas."""
        return self._stream(request_id, self._adder(request_id, True, kwargs))

    async def submit(self, request_id: str, sink: OutputSink, prefilled: bool = False,
                     **kwargs: Any) -> None:
        """Add a request whose deltas go to ``sink``, batched per step with the sink's other
        requests: ``add_prefilled_request(**kwargs)`` when ``prefilled``, else
        ``add_request(**kwargs)``. Returns once the engine took it; raises what it raised."""
        if request_id in self._sinks:
            raise ValueError(f"request id {request_id!r} is already in use")
        self._sinks[request_id] = sink
        add = self._adder(request_id, prefilled, kwargs)
        try:
            await self.call(add)
        except asyncio.CancelledError:  # the caller left: the add still runs, so undo it
            self._sinks.pop(request_id, None)
            self.abort(request_id)
            raise
        except Exception:
            self._sinks.pop(request_id, None)
            raise

    def _adder(self, request_id: str, prefilled: bool,
               kwargs: dict[str, Any]) -> Callable[[LLMEngine], None]:
        def add(engine: LLMEngine) -> None:
            if not prefilled:
                engine.add_request(request_id=request_id, **kwargs)
                return
            try:
                done = engine.add_prefilled_request(request_id=request_id, **kwargs)
            except Exception:
                # Refused (bad input, an incompatible handle): nobody here will pull it, so
                # the owner may free the blocks now rather than at the lease's end.
                handle = kwargs.get("handle")
                if engine.remote is not None and handle is not None:
                    engine.remote.connector.release(handle)
                raise
            if done is not None:
                self._deliver([done])
        return add

    def abort(self, request_id: str) -> None:
        def run(engine: LLMEngine) -> None:
            engine.abort_request(request_id)
            self._close_stream(request_id, FinishReason.ABORT)
        self._commands.put(run)

    async def abort_request(self, request_id: str) -> bool:
        """Stop ``request_id`` wherever it is (its sink gets an ``abort`` finish); True when
        the engine knew it."""
        def run(engine: LLMEngine) -> bool:
            found = engine.abort_request(request_id)
            self._close_stream(request_id, FinishReason.ABORT)
            return found
        return await self.call(run)

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` in the engine thread and return its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def run(engine: LLMEngine) -> None:
            try:
                result = fn(engine)
            except Exception as e:
                loop.call_soon_threadsafe(_set_exception, future, e)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)
        self._commands.put(run)
        return await future

    async def stats(self) -> EngineStats:
        return await self.call(lambda engine: engine.stats())

    async def _stream(self, request_id: str,
                      add: Callable[[LLMEngine], Any]) -> AsyncIterator[RequestDelta]:
        sink = _QueueSink(asyncio.get_running_loop())
        if request_id in self._sinks:
            raise ValueError(f"request id {request_id!r} is already in use")
        self._sinks[request_id] = sink

        def run(engine: LLMEngine) -> None:
            try:
                add(engine)
            except Exception as e:  # bad input: reported to this request's caller only
                self._sinks.pop(request_id, None)
                sink.loop.call_soon_threadsafe(sink.queue.put_nowait, e)
        self._commands.put(run)
        finished = False
        try:
            while True:
                item = await sink.queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the caller went away (cancelled) or an error: stop the request
                self._sinks.pop(request_id, None)
                self.abort(request_id)

    # -- engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = LLMEngine(self.config)
        except BaseException as e:  # reported to start()
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        engine = self.engine
        try:
            while not self._stop.is_set():
                busy = engine.has_unfinished()
                waiting_on_transfers = engine.num_held_kv > 0
                timeout = 0 if busy else (_HOLDING_WAIT_S if waiting_on_transfers
                                          else _IDLE_WAIT_S)
                self._drain_commands(engine, timeout)
                if engine.has_unfinished() or engine.num_held_kv:
                    self._deliver(engine.step())
                self.kv_events.extend(engine.drain_kv_events())
        except Exception:
            log.exception("engine loop crashed")
            for rid in list(self._sinks):
                self._close_stream(rid, FinishReason.ERROR, "engine loop crashed")
            raise
        finally:
            engine.shutdown()

    def _drain_commands(self, engine: LLMEngine, timeout: float) -> None:
        try:
            cmd = self._commands.get(timeout=timeout) if timeout else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                cmd(engine)
            except Exception:
                log.exception("engine command failed")
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, deltas: list[RequestDelta]) -> None:
        """One step's deltas: one hand-over per sink, carrying all of its requests' deltas."""
        if not deltas:
            return
        by_sink: dict[int, tuple[OutputSink, list[RequestDelta]]] = {}
        sinks = self._sinks
        for delta in deltas:
            sink = sinks.get(delta.request_id)
            if sink is None:
                continue
            if delta.finished:
                sinks.pop(delta.request_id, None)
            entry = by_sink.get(id(sink))
            if entry is None:
                by_sink[id(sink)] = (sink, [delta])
            else:
                entry[1].append(delta)
        for sink, batch in by_sink.values():
            sink.loop.call_soon_threadsafe(sink.put, batch)

    def _close_stream(self, request_id: str, reason: FinishReason, error: str | None = None):
        sink = self._sinks.pop(request_id, None)
        if sink is not None:
            sink.loop.call_soon_threadsafe(sink.put, [RequestDelta(
                request_id, [], finished=True, finish_reason=reason, error=error)])


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
