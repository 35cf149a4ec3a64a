"""Servicer code run outside gRPC: a stand-in for ``grpc.aio.ServicerContext`` whose
``abort`` raises ``Refused`` (the status code and details) instead of ending a call.

The outputs socket takes submissions without a unary call (worker/output_socket.py); it runs
the same ``Submit`` method, checks and all, under this context and sends a refusal back as the
request's error output with ``error_code`` set, so both carriers refuse the same things in the
same words.
"""

from __future__ import annotations

import grpc


class Refused(Exception):
    """What ``context.abort(code, details)`` said."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class RefusingContext:
    """The part of ``grpc.aio.ServicerContext`` that Submit's path uses."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Refused(code, details)


REFUSING = RefusingContext()
