"""A private Redis for one cluster: ``redis-server`` when the machine has it, else fakeredis's
TCP server (the real protocol, served from this process), so everything talking to it runs the
same code either way. Used by ``pdserve up``, the Ray deployment and the integration tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalRedis:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 log=subprocess.DEVNULL, preexec_fn=None):
        """Start serving on ``host``:``port`` (a free port by default); ``log`` takes the
        server's output."""
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None
        self.fake = None
        binary = shutil.which("redis-server")
        if binary:
            self.kind = "redis-server"
            cmd = [binary, "--port", str(self.port), "--bind", host, "--save", "",
                   "--appendonly", "no"]
            if host != "127.0.0.1":  # reachable from other nodes (Ray): no loopback-only guard
                cmd += ["--protected-mode", "no"]
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=preexec_fn)
        else:
            from fakeredis import TcpFakeServer

            self.kind = "embedded (fakeredis)"
            self.fake = TcpFakeServer((host, self.port), server_type="redis")
            threading.Thread(target=self.fake.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    def url_for(self, host: str) -> str:
        """The URL through ``host``: this machine's address where it serves all interfaces."""
        return f"redis://{host}:{self.port}/0"

    def wait(self, timeout_s: float = 15.0) -> None:
        import redis

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                local = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
                redis.Redis.from_url(self.url_for(local)).ping()
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
