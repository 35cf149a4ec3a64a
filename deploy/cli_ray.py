"""`pdserve ray up|scale|status|down`: pdserve on an existing Ray cluster."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ray_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="deploy Redis, the router and the worker pools")
    up.add_argument("--prefill", type=int, default=1, help="prefill workers")
    up.add_argument("--decode", type=int, default=1, help="decode workers")
    up.add_argument("--decode-tp", type=int, default=1,
                    help="GPUs per decode worker (one placement group per TP gang)")
    up.add_argument("--gpus-per-rank", type=float, default=None,
                    help="GPUs per worker rank (default: 1 if the cluster has GPUs, else 0)")
    up.add_argument("--model", default="demo")
    up.add_argument("--port", type=int, default=8000, help="router HTTP port")
    up.add_argument("--redis", default=None, help="use this Redis instead of an actor")
    up.add_argument("--policy", default="kv_aware")
    up.add_argument("--router-workers", type=int, default=1,
                    help="router processes on --port (the router's --workers)")
    up.add_argument("--advertise-host", default=None,
                    help="address components publish (default: each node's Ray address; "
                         "127.0.0.1 keeps a single-node deployment on loopback)")
    for role, where in (("prefill", "prefill workers, one unit each"),
                        ("decode", "decode workers (each TP gang), one unit each"),
                        ("router", "the router and the Redis actor, one unit together")):
        up.add_argument(f"--{role}-resource", default=None, metavar="NAME",
                        help=f"place {where}, only on nodes offering this custom Ray resource "
                             f"(start those nodes with `ray start --resources "
                             f"'{{\"NAME\": N}}'`); default: wherever Ray finds room")
    up.add_argument("--worker-arg", action="append", default=[],
                    help="extra flag for every worker (repeat)")
    scale = sub.add_parser("scale", help="resize pools live: prefill=N decode=M")
    scale.add_argument("sizes", nargs="+", metavar="ROLE=N")
    sub.add_parser("status", help="pools, workers, load and KV usage")
    sub.add_parser("down", help="drain and remove every pdserve actor")
    for p in (up, scale, sub.choices["status"], sub.choices["down"]):
        p.add_argument("--address", default=None, help="Ray cluster address (default: auto)")


def run(args: argparse.Namespace) -> int:
    from deploy import ray_deploy

    say = lambda *a: print(*a, flush=True)  # noqa: E731
    ray_deploy.connect(args.address)
    if args.ray_command == "up":
        import ray

        gpus = args.gpus_per_rank
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        spec = ray_deploy.RaySpec(model=args.model, decode_tp=args.decode_tp,
                                  gpus_per_rank=gpus, router_port=args.port,
                                  redis_url=args.redis, policy=args.policy,
                                  router_processes=args.router_workers,
                                  worker_args=tuple(args.worker_arg),
                                  advertise_host=args.advertise_host,
                                  prefill_resource=args.prefill_resource,
                                  decode_resource=args.decode_resource,
                                  router_resource=args.router_resource)
        url = ray_deploy.up(spec, args.prefill, args.decode, log=say)
        say(f"[pdserve] ready: {url}/v1")
        return 0
    if args.ray_command == "scale":
        from deploy.cli_scale import parse_sizes

        sizes = parse_sizes(args.sizes)
        ray_deploy.scale(sizes.get("prefill"), sizes.get("decode"), log=say)
        say("[pdserve] done")
        return 0
    if args.ray_command == "status":
        from deploy.cli_status import run as print_status

        return print_status(argparse.Namespace(router=ray_deploy.router_url(), cache_dir=None))
    ray_deploy.down(log=say)
    left = ray_deploy.remaining_actors()
    if left:
        say(f"[pdserve] still present: {left}")
        return 1
    say("[pdserve] removed")
    return 0
