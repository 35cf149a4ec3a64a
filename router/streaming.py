"""A streaming response that always closes its body, so a client that hangs up ends the work.

Starlette's ``StreamingResponse`` iterates the body with ``async for`` and, when the client
disconnects, cancels that loop (or lets ``send`` fail) without calling ``aclose()`` on the body
generator. A generator left suspended at a ``yield`` runs its ``finally`` blocks only when the
garbage collector gets to it: here those blocks cancel the workers' gRPC calls and free the
KV a prefill worker holds for the request, so until then the blocks stay held (up to the lease's
end). This subclass closes the body deterministically once the response is over, however it
ended.

It also watches for the hang-up with one plain asyncio task instead of Starlette's anyio task
group (a group, two tasks and their cancel scopes per response, ~10% of the router's CPU per
streamed request in a profile): the task waits on ``receive`` and, on ``http.disconnect``,
cancels the task writing the stream. uvicorn (ASGI spec 2.3) drops writes to a closed
connection silently, so without the watcher a stream would run to its end for nobody.

A body may mark its last chunk (``LastChunk``): it goes out as the response's last body
message, which the server writes together with the chunked encoding's terminator, one socket
write per response fewer than an empty closing message costs.
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class LastChunk(bytes):
    """A body chunk after which the body has nothing more to send."""


class ClosingStreamingResponse(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            last = type(chunk) is LastChunk
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return  # the body is closed in __call__'s finally
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    hung_up = True
                    writer.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not hung_up:
                raise  # cancelled from outside (shutdown): not ours to swallow
            writer.uncancel()
        except OSError:  # a server that reports the hang-up on send (ASGI spec 2.4)
            pass
        finally:
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # a no-op for a body that ran to its end
        if self.background is not None and not hung_up:
            await self.background()
