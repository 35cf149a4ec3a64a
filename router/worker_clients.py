"""One gRPC channel per worker address, reused by every request.

The cluster token goes on each call as metadata, not through a client interceptor: grpc.aio
runs every intercepted call through an extra task, and a streaming call's every message through
an extra iterator, which the router pays per request and per output batch.
"""

from __future__ import annotations

import functools

import grpc

from common import defaults
from proto import auth, keepalive, pb_grpc

_MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", defaults.GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", defaults.GRPC_MAX_MESSAGE_BYTES),
]


class WorkerClients:
    def __init__(self, keepalive_time_ms: int = keepalive.KEEPALIVE_TIME_MS,
                 token: str | None = None) -> None:
        """``keepalive_time_ms``: how often each connection is pinged; the workers' servers
        accept the default (``proto/keepalive.py``), tests shorten both sides. ``token``: the
        cluster's gRPC token, sent on every call (``proto/auth.py``; None: --insecure)."""
        self.token = token  # also the outputs socket's (router/worker_streams.py)
        self._metadata = auth.call_metadata(token)
        self._options = _MESSAGE_OPTIONS + keepalive.channel_options(keepalive_time_ms)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.WorkerStub] = {}

    def stub(self, address: str) -> pb_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = pb_grpc.WorkerStub(self.channel(address))
            if self._metadata:
                stub = _WithMetadata(stub, self._metadata)
            self._stubs[address] = stub
        return stub

    def channel(self, address: str) -> grpc.aio.Channel:
        """The one channel to ``address`` (its connectivity state shows a dropped connection)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=self._options)
        return channel

    async def drop(self, address: str) -> None:
        self._stubs.pop(address, None)
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.drop(address)


class _WithMetadata:
    """A stub whose every method sends ``metadata`` (the generated stub's methods are
    attributes set in its ``__init__``)."""

    def __init__(self, stub: pb_grpc.WorkerStub, metadata: tuple) -> None:
        for name, method in vars(stub).items():
            setattr(self, name, functools.partial(method, metadata=metadata))
