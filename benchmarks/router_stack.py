"""The processes router_bench measures, started from one source tree each: Redis (shared by
the run), the instant mock workers and the router with N processes.

Everything of a tree runs with ``cwd=TREE`` and ``PYTHONPATH=TREE``, spawned only as
``python -m benchmarks.mock_workers`` and ``python -m deploy.cli router`` (the entry points
every tree of this project has, old ``cluster/`` layout included), so a baseline checkout is
measured side by side with this one in the same run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.process_cpu import tree_pids
from common import defaults
from common.cluster_secret import ENV_VAR, ClusterSecret, generate_secret
from common.redis_acl import ADMIN, acl_rules, url_for_role
from deploy.redis_server import free_port

HERE = Path(__file__).resolve().parent
# Every pid this run started (router children included), so "what else ran" leaves them out.
SPAWNED: set[int] = set()


# The cluster secret of every stack this process starts: trees with component authentication
# (issue 17) read it from the environment, older trees ignore it, so one harness runs both.
BENCH_SECRET = ClusterSecret(os.environ.get(ENV_VAR) or generate_secret())


def tree_env(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1",
                OMP_WAIT_POLICY="PASSIVE", **{ENV_VAR: BENCH_SECRET.value})


def affinity(cpus: list[int] | None):
    """A preexec_fn pinning the child (and everything it forks) to ``cpus``; None: unpinned."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def router_supports_workers(tree: Path) -> bool:
    """Whether the tree's router takes ``--workers N`` (read from its --help)."""
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "router", "--help"], cwd=tree,
                         env=tree_env(tree), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: `deploy.cli router --help` failed:\n{out.stderr[-2000:]}")
    return "--workers" in out.stdout


def git_describe(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "-uno"],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip()[:72] or "?") + (" (+uncommitted)" if dirty else "")


@dataclass
class RedisProcess:
    """``redis-server`` when installed, else fakeredis's TCP server in a process of its own
    (not a thread of the load generator, whose CPU the benchmark reports)."""

    cpus: list[int] | None = None
    port: int = field(default_factory=free_port)
    kind: str = ""
    process: subprocess.Popen | None = None

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary:
            self.kind = "redis-server"
            cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]
        else:
            self.kind = "fakeredis TCP server (no redis-server on PATH)"
            cmd = [sys.executable, "-c",
                   "import sys; from fakeredis import TcpFakeServer; "
                   "s = TcpFakeServer(('127.0.0.1', int(sys.argv[1])), server_type='redis'); "
                   "s.serve_forever()", str(self.port)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=affinity(self.cpus))
        SPAWNED.add(self.process.pid)
        import redis

        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                admin = redis.Redis(port=self.port)
                admin.ping()
                break
            except Exception:
                time.sleep(0.05)
        else:
            raise RuntimeError("Redis did not come up")
        # Locked like a real cluster's Redis, after it is up (a benchmark's private server).
        for rule in acl_rules(BENCH_SECRET, defaults.REDIS_KEY_PREFIX):
            admin.execute_command("ACL", "SETUSER", *rule)
        return self

    @property
    def url(self) -> str:
        """With the admin user's credentials, which every tree uses as given (older trees
        know no roles; newer ones use credentials in the URL as they are)."""
        return url_for_role(f"redis://127.0.0.1:{self.port}/0", BENCH_SECRET, ADMIN)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_mock(tree: Path, redis_url: str, prefix: str, num_prefill: int, num_decode: int,
               cpus: list[int] | None) -> tuple[subprocess.Popen, dict[str, str]]:
    """One mock_workers process of ``tree``; returns it and its addresses by role."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mock_workers", redis_url, prefix, str(num_prefill),
         str(num_decode)], cwd=tree, env=tree_env(tree), stdout=subprocess.PIPE, text=True,
        preexec_fn=affinity(cpus))
    SPAWNED.add(proc.pid)
    addrs = {}
    for line in proc.stdout:
        if line.startswith("MOCK "):
            _, role, addr, *rest = line.split()
            addrs[role] = addr
            for field_ in rest:  # "outputs=ADDR": the mock's outputs socket
                if field_.startswith("outputs="):
                    addrs[f"{role}_outputs"] = field_.split("=", 1)[1]
        if line.startswith("MOCKS_READY"):
            break
    else:
        raise RuntimeError(f"{tree}: mock workers exited before MOCKS_READY ({proc.wait()})")
    return proc, addrs


def direct_latencies(tree: Path, prefill_addr: str, decode_addr: str, prompt_tokens: int,
                     n: int, outputs_addr: str = "",
                     prefill_outputs_addr: str = "") -> list[float] | str:
    """router_direct.py against the mocks in the tree's proto; its latencies, or why not.
    ``outputs_addr`` / ``prefill_outputs_addr``: the decode / prefill mock's outputs socket,
    used as the tree's router uses them."""
    import json

    sockets = [outputs_addr, prefill_outputs_addr] if outputs_addr else []
    proc = subprocess.Popen([sys.executable, str(HERE / "router_direct.py"), prefill_addr,
                             decode_addr, str(prompt_tokens), str(n), *sockets], cwd=tree,
                            env=tree_env(tree), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    SPAWNED.add(proc.pid)
    stdout, stderr = proc.communicate(timeout=300)
    for line in stdout.splitlines():
        if line.startswith("DIRECT "):
            return json.loads(line[7:])["latencies_s"]
    return f"direct baseline failed: {stderr.strip().splitlines()[-1:]}"


@dataclass
class RouterProcess:
    """``python -m deploy.cli router`` of one tree, ``--workers N`` when N > 1."""

    tree: Path
    redis_url: str
    prefix: str
    processes: int
    cpus: list[int] | None
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, timeout_s: float = 120.0) -> RouterProcess:
        cmd = [sys.executable, "-m", "deploy.cli", "router", "--redis", self.redis_url,
               "--redis-prefix", self.prefix, "--port", str(self.port), "--log-level",
               "warning", *self.extra]
        if self.processes > 1:
            cmd += ["--workers", str(self.processes)]
        fd, name = tempfile.mkstemp(prefix="router_bench_", suffix=".log")
        self.log = Path(name)
        self.process = subprocess.Popen(cmd, cwd=self.tree, env=tree_env(self.tree),
                                        stdout=fd, stderr=fd, preexec_fn=affinity(self.cpus))
        os.close(fd)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when health, on fresh connections (so spread over every process on the port),
        shows prefill and decode workers 4 × processes times in a row."""
        import httpx

        deadline = time.time() + timeout_s
        streak = 0
        while time.time() < deadline and streak < 4 * self.processes:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited ({self.process.returncode}): "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                h = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json()
                streak = streak + 1 if h.get("prefill_workers") and h.get("decode_workers") else 0
            except Exception:
                streak = 0
            time.sleep(0.05 if streak else 0.2)
        if streak < 4 * self.processes:
            raise RuntimeError(f"router not ready in {timeout_s}s: {self.log.read_text()[-3000:]}")
        time.sleep(0.5)  # let a multi-process router's last children finish starting
        SPAWNED.update(tree_pids(self.process.pid))

    def stop(self) -> None:
        stop_process(self.process)
        if self.log is not None:
            self.log.unlink(missing_ok=True)
