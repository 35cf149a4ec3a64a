"""`pdserve scale prefill=N decode=M`: resize the pools of a running local cluster.

New workers join through the registry; removed ones drain (finish their requests, take no new
ones) before they exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sizes", nargs="+", metavar="ROLE=N",
                        help="target sizes, e.g. prefill=2 decode=2")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the pools to reach their sizes")
    parser.add_argument("--no-wait", action="store_true", help="return at once")


def parse_sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        role, _, value = item.partition("=")
        if role not in ("prefill", "decode") or not value.isdigit():
            raise ValueError(f"expected prefill=N or decode=N, got {item!r}")
        sizes[role] = int(value)
    if sizes.get("decode", 1) < 1:
        raise ValueError("a cluster needs at least one decode worker")
    return sizes


def run(args: argparse.Namespace) -> int:
    import httpx
    import redis

    from common.redis_schema import Keys
    from deploy.cli_status import find_cluster

    sizes = parse_sizes(args.sizes)
    state = find_cluster(args)
    keys = Keys(state.redis_prefix)
    redis.Redis.from_url(state.admin_redis_url()).hset(
        keys.control(), mapping={f"desired_{role}": n for role, n in sizes.items()})
    print(f"[pdserve] scaling to {', '.join(f'{r}={n}' for r, n in sizes.items())}")
    if args.no_wait:
        return 0
    deadline = time.time() + args.timeout
    last = None
    while time.time() < deadline:
        view = httpx.get(f"{state.router_url}/v1/cluster", timeout=10).json()
        counts = {role: sum(1 for w in view["workers"] if w["role"] == role)
                  for role in ("prefill", "decode")}
        serving = view["pools"]
        if counts != last:
            print(f"[pdserve] prefill {counts['prefill']} ({serving['prefill']} serving), "
                  f"decode {counts['decode']} ({serving['decode']} serving)")
            last = counts
        if all(counts[r] == n and serving[r] == n for r, n in sizes.items()):
            print("[pdserve] done")
            return 0
        time.sleep(0.5)
    print("[pdserve] timed out waiting for the pools", file=sys.stderr)
    return 1
