"""The ASGI application uvicorn serves: the API-key check, the body limit and the completion
fast path in front of the FastAPI app, not inside its middleware stack.

Inside FastAPI every request first walks Starlette's stack (its error middleware, FastAPI's
exception-telemetry and body-limit middlewares), each a coroutine frame and a wrapped ``send``
per message: ~5% of the router's CPU at 64 streaming clients in a py-spy profile (2-core VM,
session 13), spent on every token of a streamed answer. In front of it, the fast path's
requests skip all of that; everything else (other routes, bodies the fast path hands back)
still reaches FastAPI through the same key check and body limit, so refusals keep their
shapes. What FastAPI's outer error middleware did for the fast path (an escaped exception
answered 500 and logged) uvicorn does itself.
"""

from __future__ import annotations

from fastapi import FastAPI


class FrontDoor:
    """``chain``: the ASGI app requests enter (its last link hands on to ``app``, which gets
    the lifespan and every request the chain does not answer); ``app``: that FastAPI app."""

    def __init__(self, chain, app: FastAPI):
        self._chain = chain
        self.app = app

    async def __call__(self, scope, receive, send):
        await self._chain(scope, receive, send)
