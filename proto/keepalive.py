"""gRPC keepalive: the one ping policy the router's channels and the workers' servers share.

The router pings every worker connection, idle or not, so a dead worker is noticed before a
request is sent down a broken connection. A gRPC server by default accepts one ping per
5 minutes while it sends nothing, none on a connection without calls, and after 2 "strikes"
answers GOAWAY too_many_pings, which fails the calls in flight with ``UNAVAILABLE: Too many
pings`` (seen on a long prefill). So both sides are built from these functions, and the server
accepts pings twice as often as the client sends them (timers jitter).

Torch-free: the router imports it.
"""

from __future__ import annotations

KEEPALIVE_TIME_MS = 10_000  # the router pings each worker connection this often
KEEPALIVE_TIMEOUT_MS = 5_000  # ...and drops it when a ping is not answered within this
MAX_PING_STRIKES = 2  # gRPC's default: pings faster than allowed that a server tolerates

Options = list[tuple[str, int]]


def channel_options(keepalive_time_ms: int = KEEPALIVE_TIME_MS,
                    keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS) -> Options:
    """Keepalive options for a client channel to a worker."""
    return [
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),  # idle connections too
        ("grpc.http2.max_pings_without_data", 0),  # no cap on pings between data frames
    ]


def server_options(keepalive_time_ms: int = KEEPALIVE_TIME_MS) -> Options:
    """Keepalive options for a worker's server: it accepts what ``channel_options`` sends."""
    return [
        # The C core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS is spelled like
        # this; "...min_recv_ping_interval..." is silently ignored (unknown keys are).
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_time_ms // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),  # still refuses a ping flood
    ]
