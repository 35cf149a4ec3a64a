"""`pdserve status`: pools, workers, load, KV usage and prefix-hit ratio of a running cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", default=None,
                        help="router URL (default: the cluster `pdserve up` started)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where `pdserve up` "
                        "recorded the running cluster")


def find_cluster(args):
    from deploy.cli_up import state_file
    from deploy.local_cluster import ClusterState

    path = state_file(args.cache_dir)
    if not path.exists():
        raise FileNotFoundError(f"no running cluster recorded at {path}; start one with "
                                "`pdserve up` (or pass --router/--redis)")
    return ClusterState.load(path)


def run(args: argparse.Namespace) -> int:
    import httpx

    router = args.router or find_cluster(args).router_url
    try:
        view = httpx.get(f"{router}/v1/cluster", timeout=10).json()
    except httpx.HTTPError as e:
        print(f"pdserve status: cannot reach the router at {router}: {e}", file=sys.stderr)
        return 1
    pools = view["pools"]
    print(f"router {router}  policy {view['policy']}  redis {'up' if view['redis'] else 'DOWN'}")
    print(f"pools: prefill {pools['prefill']}, decode {pools['decode']}   prefix hit ratio "
          f"{view['prefix_hit_ratio']:.1%}   index {view['index']['blocks']} blocks "
          f"({view['index']['accuracy_verdict']})")
    header = f"{'worker':<28} {'role':<8} {'address':<22} {'tp':>2} {'kv use':>7} " \
             f"{'queue':>5} {'run':>4} {'leases':>6} {'state':<9}"
    print(header)
    print("-" * len(header))
    for w in view["workers"]:
        state = "draining" if w["draining"] else "fenced" if w["fenced"] else "serving"
        print(f"{w['worker_id']:<28} {w['role']:<8} {w['address']:<22} {w['tp_size']:>2} "
              f"{w['kv_usage']:>7.1%} {w['queue_depth']:>5} {w['running']:>4} "
              f"{w['held_leases']:>6} {state:<9}")
    return 0
