"""Real services for integration tests: a Redis server and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.cluster_secret import ENV_VAR, ClusterSecret
from deploy.redis_server import LocalRedis, free_port

ROOT = Path(__file__).resolve().parents[1]


def cluster_secret() -> ClusterSecret:
    """The session's secret (tests/conftest.py puts it in the environment)."""
    return ClusterSecret(os.environ[ENV_VAR])


def worker_channel(address: str, **kwargs):
    """A gRPC channel to a worker that authenticates as the router does."""
    import grpc

    from proto import auth

    return grpc.aio.insecure_channel(
        address, interceptors=auth.client_interceptors(cluster_secret().grpc_token), **kwargs)


class RedisServer(LocalRedis):
    """A real ``redis-server`` when installed (CI installs it); otherwise fakeredis's TCP
    server, which speaks the real protocol, so the code under test is the same. Locked with
    the session's cluster secret, like every cluster's Redis; its roles' key patterns take any
    prefix ("*"), since the test modules run clusters of their own prefixes on it."""

    def __init__(self, port: int | None = None):
        super().__init__(port=port, secret=cluster_secret(), prefix="*")
        self.wait()

    def client(self):
        """A client as the admin user (tests inspect and plant keys with it)."""
        import redis

        return redis.Redis.from_url(self.admin_url())

    def restart(self) -> RedisServer:
        """A new, empty server on the same port (as after a Redis crash)."""
        self.stop()
        return RedisServer(self.port)


class WorkerProcess:
    """``pdserve prefill|decode`` in a subprocess; ready once it prints its address."""

    def __init__(self, role: str, model_args: list[str], redis_url: str | None,
                 extra: list[str] | None = None, timeout: float = 120.0,
                 prefix: list[str] | None = None):
        """``prefix`` wraps the command (e.g. ``ip netns exec NS``: another simulated host)."""
        self.role = role
        cmd = [*(prefix or []), sys.executable, "-m", "deploy.cli", role, *model_args,
               "--redis", redis_url or "none", *(extra or [])]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        self.log_lines: list[str] = []
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout
        self.address = self.worker_id = None
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log_lines.append(line)
            if line.startswith("PDSERVE_WORKER_READY"):
                _, self.worker_id, self.address, *fields = line.split()
                named = dict(f.split("=", 1) for f in fields)
                self.metrics_port = int(named["metrics"])
                outputs = named.get("outputs", "-")
                self.outputs_address = "" if outputs == "-" else outputs
                break
        if self.address is None:
            self.process.kill()
            raise RuntimeError(f"{role} worker did not start:\n{''.join(self.log_lines)}")
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.log_lines.append(line)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class RouterProcess:
    """``pdserve router`` in a subprocess; ready once /health answers (with ``processes`` > 1:
    ``--workers N``, ready once N distinct router pids have answered, in ``self.pids``)."""

    def __init__(self, redis_url: str, extra: list[str] | None = None, timeout: float = 60.0,
                 wait_for: tuple[int, int] = (0, 1), processes: int = 1,
                 host: str = "127.0.0.1", prefix: list[str] | None = None):
        import httpx

        self.port = free_port()  # free here; in another namespace every port is
        self.url = f"http://{host}:{self.port}"
        cmd = [*(prefix or []), sys.executable, "-m", "deploy.cli", "router", "--redis",
               redis_url, "--host", host, "--port", str(self.port), *(extra or [])]
        if processes > 1:
            cmd += ["--workers", str(processes)]
        self.pids: set[int] = set()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log_lines: list[str] = []
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.time() + timeout
        want_prefill, want_decode = wait_for
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            try:
                # A new connection each time: with SO_REUSEPORT each may reach another process.
                health = httpx.get(f"{self.url}/health", timeout=1).json()
                if health["prefill_workers"] >= want_prefill and \
                        health["decode_workers"] >= want_decode:
                    self.pids.add(health.get("pid"))
                    if len(self.pids) >= processes:
                        return
            except Exception:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("router did not become ready:\n" + "".join(self.log_lines[-40:]))

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.log_lines.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
