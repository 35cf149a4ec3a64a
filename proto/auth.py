"""Authentication of every call between components: a per-cluster bearer token in the call's
metadata, checked by the worker's server before any handler runs.

The token is derived from the cluster secret (common/cluster_secret.py), so it is the same on
every component and reveals nothing else. ``Health`` stays open: it says "serving" or "not"
and nothing more, and probes (Kubernetes, load balancers) have no secret.

Refusals are ``UNAUTHENTICATED`` with a message that says what was missing, and one log line
per second at most (with a count), so a scanner cannot flood the log.

Torch-free: the router imports it.
"""

from __future__ import annotations

import hmac
import logging
import time

import grpc

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
OPEN_METHODS = frozenset({"/pdserve.v1.Worker/Health"})


class RefusalLog:
    """Refusals logged at most once a second, with how many there were since the last line,
    so a scanner cannot flood the log. ``what`` names the refused thing ("call")."""

    def __init__(self, what: str):
        self._what = what
        self._since_log = 0
        self._last_log = 0.0

    def note(self, detail: str) -> None:
        self._since_log += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            log.warning("refused %d unauthenticated %s(s), last: %s", self._since_log,
                        self._what, detail)
            self._since_log, self._last_log = 0, now


class TokenAuthServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, open_methods: frozenset[str] = OPEN_METHODS):
        self._expected = f"Bearer {token}".encode()
        self._open = open_methods
        self._refusals = RefusalLog("call")

    def _authorized(self, metadata) -> str | None:
        """None when the call carries the token, else why not."""
        for key, value in metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return None if hmac.compare_digest(given, self._expected) else \
                    "wrong cluster token"
        return "no cluster token"

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method in self._open:
            return handler
        reason = self._authorized(details.invocation_metadata)
        if reason is None:
            return handler
        self._refusals.note(f"{details.method} ({reason})")
        return _refusing_handler(handler, f"{reason}: this worker accepts calls only from "
                                          "components holding the cluster secret")


def _refusing_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""
    async def refuse(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # unreachable: makes this an async generator, as streaming handlers are

    codec = dict(request_deserializer=handler.request_deserializer,
                 response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)


def _with_token(details: grpc.aio.ClientCallDetails, pair: tuple[str, str]):
    metadata = grpc.aio.Metadata(*(details.metadata or ()), pair)
    return details._replace(metadata=metadata)


class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, pair):
        self.pair = pair

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_token(details, self.pair), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, pair):
        self.pair = pair

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_token(details, self.pair), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, pair):
        self.pair = pair

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_with_token(details, self.pair), request_iterator)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, pair):
        self.pair = pair

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_with_token(details, self.pair), request_iterator)


def client_interceptors(token: str | None) -> list:
    """Interceptors that add the token to every call of a channel (none without a secret)."""
    if token is None:
        return []
    pair = (METADATA_KEY, f"Bearer {token}")
    return [cls(pair) for cls in (_TokenUnaryUnary, _TokenUnaryStream, _TokenStreamUnary,
                                  _TokenStreamStream)]


def server_interceptors(token: str | None) -> list:
    return [] if token is None else [TokenAuthServerInterceptor(token)]


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """For synchronous channels and one-off calls (CLI, tests): pass as ``metadata=``."""
    return () if token is None else ((METADATA_KEY, f"Bearer {token}"),)
