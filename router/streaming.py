"""A streaming response that always closes its body, so a client that hangs up ends the work.

Starlette's ``StreamingResponse`` iterates the body with ``async for`` and, when the client
disconnects, cancels that loop (or lets ``send`` fail) without calling ``aclose()`` on the body
generator. A generator left suspended at a ``yield`` runs its ``finally`` blocks only when the
garbage collector gets to it: here those blocks cancel the workers' gRPC calls and free the
KV a prefill worker holds for the request, so until then the blocks stay held (up to the lease's
end). This subclass closes the body deterministically once the response is over, however it
ended.
"""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # a no-op for a body that ran to its end
