"""Flags shared by `pdserve prefill` and `pdserve decode` (service flags + engine flags)."""

from __future__ import annotations

import argparse
import dataclasses

from common import defaults
from common.cluster_secret import add_secret_arguments, secret_from_args


def add_worker_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    from engine.cli_args import add_engine_arguments

    g = parser.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=0, help="gRPC port; 0 picks a free one")
    g.add_argument("--outputs-port", type=int, default=0,
                   help="port of the outputs socket routers send prefills and "
                        "submissions on and read tokens from (length-prefixed protobuf over "
                        "TCP, cheaper per message than gRPC calls and the gRPC Outputs "
                        "stream); 0 picks a free one, -1 turns it off (routers then make gRPC "
                        "calls)")
    g.add_argument("--advertise-host", default=None,
                   help="address other components dial, for gRPC (registry) and KV pulls "
                        "(NIXL agent); default: --host, or when binding all interfaces the "
                        "address of the interface that routes to Redis (loopback if Redis "
                        "is local)")
    g.add_argument("--redis", default=defaults.REDIS_URL,
                   help="Redis URL for the registry and KV events; 'none' to run without")
    g.add_argument("--redis-prefix", default=defaults.REDIS_KEY_PREFIX, help="key prefix (one per cluster)")
    g.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus /metrics port; 0 picks a free one, -1 disables")
    g.add_argument("--worker-id", default=None, help="registry id (default: role-host-random)")
    g.add_argument("--kv-transfer", choices=["nixl", "none"], default="nixl",
                   help="KV transfer backend (none: this worker can only prefill and decode "
                        "locally)")
    g.add_argument("--kv-lease-s", type=float, default=defaults.KV_LEASE_S,
                   help="prefill: seconds held blocks wait for a pull before they are freed")
    g.add_argument("--kv-pull-timeout-s", type=float, default=defaults.KV_PULL_TIMEOUT_S,
                   help="decode: seconds before an unfinished KV pull fails")
    g.add_argument("--drain-timeout-s", type=float, default=120.0,
                   help="on SIGTERM, wait this long for requests in flight to finish")
    add_secret_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(_role=role)


def worker_config_from_args(args: argparse.Namespace, role: str):
    from engine.cli_args import engine_config_from_args
    from worker.config import WorkerConfig

    redis_url = None if args.redis.lower() == "none" else args.redis
    advertise = args.advertise_host or _auto_advertise_host(args.host, redis_url)
    engine = dataclasses.replace(engine_config_from_args(args), kv_transfer=args.kv_transfer,
                                 kv_lease_s=args.kv_lease_s,
                                 kv_pull_timeout_s=args.kv_pull_timeout_s,
                                 kv_transfer_host=advertise)
    return WorkerConfig(
        role=role, engine=engine, host=args.host, port=args.port,
        outputs_port=args.outputs_port,
        advertise_host=advertise,
        redis_url=redis_url,
        redis_prefix=args.redis_prefix,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        worker_id=args.worker_id, drain_timeout_s=args.drain_timeout_s,
        cluster_secret=secret_from_args(args, f"pdserve {role}"),
    )


def _auto_advertise_host(bind_host: str, redis_url: str | None) -> str:
    """--advertise-host's default: Redis is the one peer a worker knows at start, and the
    router and other workers reach Redis over the same network (common/net_address.py)."""
    from urllib.parse import urlparse

    from common.net_address import advertise_host

    peers = [urlparse(redis_url).hostname or "127.0.0.1"] if redis_url else []
    return advertise_host(bind_host, peers)
