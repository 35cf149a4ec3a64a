"""The outputs socket: decode outputs as length-prefixed protobuf frames on a plain TCP
connection, one per (router process, decode worker).

Why not the gRPC ``Outputs`` stream: in a profile of the router under streaming load, grpc.aio
spent ~15% of the router's CPU reading stream messages one by one (a read operation, a
completion-queue event and an event-loop wake-up per message) and ~12% more in its poller
thread. Here the kernel hands the router whatever arrived in one ``data_received`` call, and
the router parses every complete frame in it synchronously: no per-message task, future or
thread hop. The messages are still the contract's (``OutputsRequest``, ``OutputBatch``), so
``proto/`` stays the one definition of the wire.

Framing: 4 bytes little-endian payload length, then the serialized message. The router sends
one frame, an ``OutputsRequest`` with the cluster token; the worker answers an empty
``OutputBatch`` once registered (or one whose ``refused`` says why, then closes) and then one
frame per batch. Either side closing ends the stream, exactly like the gRPC stream ending.

Dead peers: TCP keepalive with the same timing as the gRPC channels (proto/keepalive.py), and a
user timeout for data the peer stopped acknowledging, so a cut link ends the stream in about
15 seconds on both sides.

Torch-free: the router imports it.
"""

from __future__ import annotations

import socket
import struct

from common import defaults
from proto.keepalive import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS

_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = defaults.GRPC_MAX_MESSAGE_BYTES
HELLO_TIMEOUT_S = 10.0  # a connection that does not say who it is by then is dropped
HELLO_MAX_BYTES = 4096  # an OutputsRequest is tiny: nothing big is buffered before the token


class FrameError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Complete frames out of a byte stream fed in arbitrary pieces."""

    __slots__ = ("_buffer", "_max_bytes")

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data`` (often many, sometimes none)."""
        buffer = self._buffer
        buffer += data
        out = []
        offset, end = 0, len(buffer)
        while end - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > self._max_bytes:
                raise FrameError(f"a frame of {length} bytes (the limit is {self._max_bytes})")
            if end - offset - 4 < length:
                break
            out.append(bytes(buffer[offset + 4:offset + 4 + length]))
            offset += 4 + length
        if offset:
            del buffer[:offset]
        return out


def tune_socket(sock: socket.socket | None) -> None:
    """No Nagle delay (each batch goes out at once), and keepalive / user timeout so a peer
    that vanished (a cut cable, a dead host) ends the stream instead of leaving it open."""
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_TIME_MS // 1000),
                        ("TCP_KEEPINTVL", KEEPALIVE_TIMEOUT_MS // 1000),
                        ("TCP_KEEPCNT", 1),
                        ("TCP_USER_TIMEOUT", KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has all four; others keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
