"""The workers' own counters (gRPC Stats) for the GPU cluster benchmarks: KV pulls and prefix
hits, read around each run, with the cluster secret every benchmark cluster shares."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import httpx


@functools.cache
def secret_file() -> Path:
    """One cluster secret for every cluster this run starts, so worker_stats can call Stats."""
    from common.cluster_secret import write_secret_file

    return write_secret_file(Path(tempfile.mkdtemp(prefix="pdserve-bench-")) / "cluster.secret")


def worker_stats(url: str, role: str) -> list[dict]:
    import grpc

    from common.cluster_secret import ClusterSecret, read_secret_file
    from proto import auth, pb, pb_grpc

    token = auth.call_metadata(ClusterSecret(read_secret_file(secret_file())).grpc_token)
    view = httpx.get(f"{url.removesuffix('/v1')}/v1/cluster", timeout=10).json()
    stats = []
    for w in view["workers"]:
        if w["role"] != role:
            continue
        with grpc.insecure_channel(w["address"]) as channel:
            s = pb_grpc.WorkerStub(channel).Stats(pb.StatsRequest(), timeout=10, metadata=token)
        stats.append({"worker_id": w["worker_id"], "pulls_ok": s.pulls_ok,
                      "pulls_failed": s.pulls_failed, "bytes_pulled": s.bytes_pulled,
                      "seconds_pulling": s.seconds_pulling,
                      "prefix_hit_tokens": s.prefix_hit_tokens,
                      "prefix_query_tokens": s.prefix_query_tokens})
    return stats


def pull_delta(before: list[dict], after: list[dict]) -> dict:
    keys = ("pulls_ok", "pulls_failed", "bytes_pulled", "seconds_pulling")
    d = {k: sum(a[k] for a in after) - sum(b[k] for b in before) for k in keys}
    d["bytes_per_s"] = d["bytes_pulled"] / d["seconds_pulling"] if d["seconds_pulling"] else 0.0
    d["mean_bytes_per_pull"] = d["bytes_pulled"] / d["pulls_ok"] if d["pulls_ok"] else 0.0
    d["mean_seconds_per_pull"] = (d["seconds_pulling"] / d["pulls_ok"]) if d["pulls_ok"] else 0.0
    return d
