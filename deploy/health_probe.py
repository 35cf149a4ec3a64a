"""A worker's readiness probe: exit 0 when its gRPC Health RPC says it serves and is not
draining, 1 otherwise (for Kubernetes ``exec`` probes, deploy/k8s/; the Health RPC is
pdserve's own, not grpc.health.v1, which Kubernetes' built-in gRPC probe would need).

    python -m deploy.health_probe HOST:PORT [--timeout-s 2]

Torch-free and quick: it imports only the wire stubs.
"""

from __future__ import annotations

import argparse
import sys


def probe(address: str, timeout_s: float) -> str | None:
    """None when ready, else why not."""
    import grpc

    from proto import pb, pb_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = pb_grpc.WorkerStub(channel).Health(pb.HealthRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    if not reply.ok:
        return f"{reply.worker_id} reports not ok"
    if reply.draining:
        return f"{reply.worker_id} is draining"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="the worker's gRPC address, e.g. 127.0.0.1:50051")
    parser.add_argument("--timeout-s", type=float, default=2.0,
                        help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    why = probe(args.address, args.timeout_s)
    if why:
        print(f"not ready: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
