"""Ray actors of a pdserve deployment.

Each actor holds the Ray resources of one component and supervises that component as a child
process (the same `pdserve router|prefill|decode` commands as everywhere else), so a worker
behaves identically under Ray, Compose and `pdserve up`. A decode worker with TP=T gets a
placement group with one bundle of T GPUs, packed on one node: its tensor-parallel ranks are
processes of that node, joined by NCCL.

All actors are detached and named in the ``pdserve`` namespace, so `pdserve ray status`,
`scale` and `down` find them from any driver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import ray

from deploy.redis_server import LocalRedis

NAMESPACE = "pdserve"


def _node_ip() -> str:
    """The address this node registered with Ray (``ray start --node-ip-address``)."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


@ray.remote(num_cpus=0)
class RedisActor:
    """Redis for the cluster, on every interface of its node (deploy.redis_server)."""

    def __init__(self, secret: str | None = None):
        from common.cluster_secret import ClusterSecret

        # Reachable from every node, so locked: only the roles' users (common/redis_acl.py).
        self.redis = LocalRedis(host="0.0.0.0", secret=ClusterSecret(secret) if secret else None)
        self.redis.wait()

    def url(self, host: str | None = None) -> str:
        return self.redis.url_for(host or _node_ip())

    def stop(self) -> None:
        self.redis.stop()


@ray.remote(num_cpus=0)
class ComponentActor:
    """Runs one `pdserve <component>` process for as long as the actor lives."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None):
        self.name = name
        # "{node_ip}" in an argument becomes this node's address (known only once placed).
        self.args = [a.replace("{node_ip}", _node_ip()) for a in args]
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE",
                         **(env or {}))
        self.log_path = os.path.join(os.environ.get("PDSERVE_RAY_LOG_DIR", "/tmp"),
                                     f"pdserve-{name}.log")
        self.process = subprocess.Popen([sys.executable, "-m", "deploy.cli", *self.args],
                                        stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, env=child_env)

    def info(self) -> dict:
        return {"name": self.name, "node_ip": _node_ip(), "pid": self.process.pid,
                "alive": self.process.poll() is None, "log": self.log_path,
                "gpus": ray.get_gpu_ids()}

    def drain(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM: the worker finishes its requests, deregisters and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
