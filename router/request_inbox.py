"""One request's outputs from its decode worker's stream, as they arrive, and the two ways a
worker call ends without them (router/worker_streams.py sorts each batch into these inboxes)."""

from __future__ import annotations

import asyncio

from proto import pb


class OutputsLost(Exception):
    """The worker's Outputs stream ended before the request finished (or a deadline passed)."""


class CallRefused(Exception):
    """A worker call that did not succeed: the gRPC status code name it ended with (or, on the
    outputs socket, the answer's ``error_code``) and its details."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class RequestInbox:
    """One request's outputs as they arrive, taken all at once by its consumer."""

    __slots__ = ("owner", "_items", "_waiter", "_lost", "_timer", "_deadline")

    def __init__(self, owner: dict[str, RequestInbox]) -> None:
        self.owner = owner  # the stream's inboxes by request id, this one among them
        self._items: list[pb.RequestOutput] = []
        self._waiter: asyncio.Future | None = None
        self._lost: str | None = None
        # One timer for the request's deadline, armed at the first wait and kept across
        # takes: a timer armed and cancelled per take cost ~2.4 us on uvloop, once per
        # token event (~17 a streamed request).
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

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
        """Every output queued so far (waiting for one if none); ``deadline``: loop time.
        Raises ``CallRefused`` when the worker refused the request's socket submission."""
        while not self._items:
            if self._lost is not None:
                raise OutputsLost(self._lost)
            loop = asyncio.get_running_loop()
            if self._timer is None or deadline != self._deadline:
                self._arm(loop, deadline)
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._items and self._lost is None and loop.time() >= deadline:
                raise OutputsLost("DEADLINE_EXCEEDED: no output before the request's deadline")
        items, self._items = self._items, []
        if items[0].error_code:  # a refusal is a request's only output
            raise CallRefused(items[0].error_code, items[0].error)
        return items

    def close(self) -> None:
        """Disarm the deadline timer (it holds this inbox until then): the consumer is done."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.close()
        self._deadline = deadline
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None  # a later take re-arms it (past its time: it fires at once)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
