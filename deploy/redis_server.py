"""A private Redis for one cluster: ``redis-server`` when the machine has it, else fakeredis's
TCP server (the real protocol, served from this process), so everything talking to it runs the
same code either way. Used by ``pdserve up``, the Ray deployment and the integration tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import defaults
from common.cluster_secret import ClusterSecret
from common.redis_acl import ADMIN, acl_file_text, acl_rules, url_for_role


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalRedis:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 log=subprocess.DEVNULL, preexec_fn=None, secret: ClusterSecret | None = None,
                 prefix: str = defaults.REDIS_KEY_PREFIX):
        """Start serving on ``host``:``port`` (a free port by default); ``log`` takes the
        server's output. With ``secret``, the server knows only the roles' users
        (common/redis_acl.py) from its first connection on: redis-server reads them from an ACL
        file at start, the embedded server gets them before it accepts anyone."""
        self.host = host
        self.port = port or free_port(host)
        self.secret = secret
        self.process: subprocess.Popen | None = None
        self.fake = None
        self._acl_dir: tempfile.TemporaryDirectory | None = None
        binary = shutil.which("redis-server")
        if binary:
            self.kind = "redis-server"
            cmd = [binary, "--port", str(self.port), "--bind", host, "--save", "",
                   "--appendonly", "no"]
            if host != "127.0.0.1":  # reachable from other nodes (Ray): no loopback-only guard
                cmd += ["--protected-mode", "no"]
            if secret is not None:
                cmd += ["--aclfile", str(self._write_acl_file(secret, prefix))]
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=preexec_fn)
        else:
            from fakeredis import FakeRedis, TcpFakeServer

            self.kind = "embedded (fakeredis)"
            self.fake = TcpFakeServer((host, self.port), server_type="redis")
            if secret is not None:  # before serve_forever: no connection is accepted yet
                admin = FakeRedis(server=self.fake.fake_server)
                for rule in acl_rules(secret, prefix):
                    admin.execute_command("ACL", "SETUSER", *rule)
            threading.Thread(target=self.fake.serve_forever, daemon=True).start()

    def _write_acl_file(self, secret: ClusterSecret, prefix: str) -> Path:
        self._acl_dir = tempfile.TemporaryDirectory(prefix="pdserve-redis-")
        path = Path(self._acl_dir.name) / "users.acl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)  # it holds password hashes
        with os.fdopen(fd, "w") as f:
            f.write(acl_file_text(secret, prefix))
        return path

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    def url_for(self, host: str) -> str:
        """The URL through ``host``: this machine's address where it serves all interfaces.
        Without credentials: each component adds its role's (common/redis_acl.py)."""
        return f"redis://{host}:{self.port}/0"

    def admin_url(self, host: str = "127.0.0.1") -> str:
        return url_for_role(self.url_for(host), self.secret, ADMIN)

    def wait(self, timeout_s: float = 15.0) -> None:
        import redis

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                local = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
                redis.Redis.from_url(self.admin_url(local)).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"Redis on port {self.port} did not come up")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        if self.fake is not None:
            self.fake.shutdown()
            self.fake.server_close()
            self.fake = None
        if self._acl_dir is not None:
            self._acl_dir.cleanup()
            self._acl_dir = None
