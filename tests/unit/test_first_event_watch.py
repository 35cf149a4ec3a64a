"""A client that leaves before the first token (a long prompt still queued or prefilling) has
its request cancelled then, not when the first token would have come (router/respond.py's
``_prime``): the dispatcher's generator is closed, which aborts the prefill."""

import asyncio

import pytest

from router import respond
from router.errors import APIError


class _Request:
    def __init__(self, leaves_after_s: float):
        self.leaves_at = leaves_after_s

    async def is_disconnected(self) -> bool:
        return asyncio.get_running_loop().time() >= self.leaves_at


def test_a_client_leaving_before_the_first_token_cancels_the_request(monkeypatch):
    monkeypatch.setattr(respond, "FIRST_EVENT_POLL_S", 0.02)
    closed = {}

    async def never_first():  # a prefill that would take an hour
        try:
            await asyncio.sleep(3600)
            yield "first"
        finally:
            closed["at"] = asyncio.get_running_loop().time()

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(APIError) as refused:
            await respond._prime(None, never_first(), _Request(start + 0.1))
        return start, refused.value

    start, error = asyncio.run(main())
    assert error.status == 499 and error.code == "client_disconnected"
    assert 0.1 <= closed["at"] - start < 1.0  # cancelled within a poll or so of leaving


def test_a_first_event_comes_through_unchanged():
    async def first():
        await asyncio.sleep(0.01)
        yield "first"

    async def main():
        loop = asyncio.get_running_loop()
        return await respond._prime(None, first(), _Request(loop.time() + 3600))

    assert asyncio.run(main()) == "first"
