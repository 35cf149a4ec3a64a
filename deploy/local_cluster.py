"""The whole cluster on one machine: Redis, the router, and prefill/decode worker processes.

Redis comes from ``--redis`` if given, else a private ``redis-server`` if one is installed,
else an embedded server (fakeredis speaking the real protocol, in this process), so it works on
a bare machine. Every child gets the launcher as its parent-death signal, so nothing outlives
it; pools are resized live through a control hash in Redis (``pdserve scale``), and workers
leaving a pool drain first (SIGTERM: finish their requests, take no new ones).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common import defaults
from common.cluster_secret import ClusterSecret, read_secret_file, write_secret_file
from common.redis_acl import ADMIN, url_for_role
from common.redis_schema import Keys
from deploy.redis_server import LocalRedis

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


MAX_POOL_SIZE = 64  # a desired size beyond this is a typo or an attack, not a plan


def desired_from_control(raw: dict, log=print) -> dict[str, int]:
    """The pool sizes in the control hash that make sense (0..MAX_POOL_SIZE, decode >= 1);
    anything else is refused with a log line and changes nothing."""
    sizes = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else key
        role = key.removeprefix("desired_")
        if role not in ("prefill", "decode"):
            continue
        try:
            n = int(value)
        except ValueError:
            n = -1
        if not (role == "decode" and 1 <= n <= MAX_POOL_SIZE or
                role == "prefill" and 0 <= n <= MAX_POOL_SIZE):
            log(f"[pdserve] ignoring desired {role} size {value!r} in the control hash")
            continue
        sizes[role] = n
    return sizes


@dataclass(frozen=True)
class ClusterSpec:
    model: str = "demo"
    prefill: int = 1
    decode: int = 1
    decode_tp: int = 1
    decode_ep: int = 1  # MoE: expert groups among a decode worker's decode_tp ranks
    router_host: str = "127.0.0.1"
    router_port: int = 8000
    redis_url: str | None = None
    redis_host: str = "127.0.0.1"  # the private Redis's bind address (and the one handed out)
    redis_prefix: str = defaults.REDIS_KEY_PREFIX
    policy: str = "kv_aware"
    log_dir: Path = Path("pdserve-logs")
    worker_args: tuple[str, ...] = ()  # extra flags for every worker (engine settings)
    prefill_args: tuple[str, ...] = ()  # ... for prefill workers only (after worker_args)
    decode_args: tuple[str, ...] = ()  # ... for decode workers only
    router_args: tuple[str, ...] = ()
    router_processes: int = 1  # the router's --workers (processes sharing the port)
    cache_dir: Path | None = None
    gpus: tuple[int, ...] = ()  # hand these GPUs out: 1 per prefill worker, decode_tp per decode
    # The cluster secret (common/cluster_secret.py): this file's, else a new one generated
    # into the run's log folder (mode 600) and handed to every child by path.
    secret_file: Path | None = None


@dataclass
class Child:
    name: str
    role: str
    process: subprocess.Popen
    log_path: Path
    gpus: tuple[int, ...] = ()
    draining: bool = False  # SIGTERM sent once: a second one would kill it mid-drain

    def terminate(self) -> None:
        if not self.draining and self.process.poll() is None:
            self.draining = True
            self.process.send_signal(signal.SIGTERM)


@dataclass
class ClusterState:
    """Written to a file so `pdserve status` and `pdserve scale` find the running cluster."""

    redis_url: str
    redis_prefix: str
    router_url: str
    launcher_pid: int
    log_dir: str
    model: str
    started_at: float = field(default_factory=time.time)
    secret_file: str = ""  # `pdserve scale` writes the control hash as the admin Redis user

    def admin_redis_url(self) -> str:
        secret = ClusterSecret(read_secret_file(self.secret_file)) if self.secret_file else None
        return url_for_role(self.redis_url, secret, ADMIN)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        return cls(**json.loads(path.read_text()))


class LocalCluster:
    def __init__(self, spec: ClusterSpec, log=print):
        self.spec = spec
        self.log = log
        self.children: list[Child] = []
        self._counter = {"prefill": 0, "decode": 0}
        self._redis: LocalRedis | None = None
        self.redis_url = spec.redis_url or ""
        self.redis_kind = "given"
        self.router_url = f"http://{spec.router_host}:{spec.router_port}"
        self.log_dir = spec.log_dir / time.strftime("%Y%m%d-%H%M%S")
        self.keys = Keys(spec.redis_prefix)
        self.secret_file = spec.secret_file or write_secret_file(self.log_dir / "cluster.secret")
        self.secret = ClusterSecret(read_secret_file(self.secret_file))
        # Children read the secret from the file named on their command line, never from an
        # inherited environment variable that may name another cluster's.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_CLUSTER_SECRET")}
        self._env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        if spec.cache_dir:
            self._env["PDSERVE_CACHE_DIR"] = str(spec.cache_dir)

    # -- start --------------------------------------------------------------------------------
    def start_redis(self) -> None:
        if self.spec.redis_url:
            self._check_given_redis()
            return
        host = self.spec.redis_host
        self._redis = LocalRedis(host=host, log=self._log_file("redis"),
                                 preexec_fn=_die_with_parent, secret=self.secret,
                                 prefix=self.spec.redis_prefix)
        # Bound to all interfaces, the URL names this machine as other hosts know it.
        wildcard = host in ("0.0.0.0", "::")
        self.redis_url = self._redis.url_for(socket.gethostname() if wildcard else host)
        self.redis_kind = self._redis.kind
        self._redis.wait()

    def _check_given_redis(self) -> None:
        """A Redis we did not start must know the roles' users (or the URL its own)."""
        import redis

        try:
            redis.Redis.from_url(self.admin_redis_url, socket_timeout=5).ping()
        except redis.AuthenticationError as e:
            raise RuntimeError(
                f"Redis at {self.spec.redis_url} refused pdserve's admin user ({e}): load the "
                f"cluster's users into it (`pdserve secret --acl --cluster-secret-file "
                f"{self.secret_file}` prints an ACL file), or put credentials in --redis") from e
        except redis.RedisError as e:
            raise RuntimeError(f"Redis at {self.spec.redis_url} is not reachable: {e}") from e

    def start_all(self, timeout_s: float = 600.0, on_progress=None) -> None:
        """Redis, the router and the spec's pools; returns once the router sees them all."""
        self.start_redis()
        self.start_router()
        for role, count in (("prefill", self.spec.prefill), ("decode", self.spec.decode)):
            for _ in range(count):
                self.add_worker(role)
        self.wait_ready(self.spec.prefill, self.spec.decode, timeout_s, on_progress)

    def start_router(self) -> None:
        # info: router.log gets one line per request (--router-arg=--log-level=warning: off).
        cmd = [sys.executable, "-m", "deploy.cli", "router", "--model", self.spec.model,
               "--host", self.spec.router_host, "--port", str(self.spec.router_port),
               "--redis", self.redis_url, "--redis-prefix", self.spec.redis_prefix,
               "--policy", self.spec.policy, "--log-level", "info",
               "--workers", str(self.spec.router_processes),
               "--cluster-secret-file", str(self.secret_file), *self.spec.router_args]
        if self.spec.cache_dir:
            cmd += ["--cache-dir", str(self.spec.cache_dir)]
        self._spawn("router", "router", cmd)

    def restart_router(self, policy: str, timeout_s: float = 600.0) -> None:
        """The same workers behind a new router with another placement policy."""
        for child in [c for c in self.children if c.role == "router"]:
            child.terminate()
            child.process.wait(timeout=30)
            self.children.remove(child)
        self.spec = replace(self.spec, policy=policy)
        self.start_router()
        self.wait_ready(len(self.workers("prefill")), len(self.workers("decode")), timeout_s)

    def add_worker(self, role: str) -> Child:
        self._counter[role] += 1
        name = f"{role}-{self._counter[role]}"
        cmd = [sys.executable, "-m", "deploy.cli", role, "--model", self.spec.model,
               "--redis", self.redis_url, "--redis-prefix", self.spec.redis_prefix,
               "--worker-id", f"{name}-{os.getpid()}",
               "--cluster-secret-file", str(self.secret_file), *self.spec.worker_args,
               *(self.spec.prefill_args if role == "prefill" else self.spec.decode_args)]
        if role == "decode" and self.spec.decode_tp > 1:
            cmd += ["--tp", str(self.spec.decode_tp)]
        if role == "decode" and self.spec.decode_ep > 1:
            cmd += ["--ep", str(self.spec.decode_ep)]
        if self.spec.cache_dir:
            cmd += ["--cache-dir", str(self.spec.cache_dir)]
        gpus = self._take_gpus(self.spec.decode_tp if role == "decode" else 1)
        return self._spawn(name, role, cmd, gpus)

    def _take_gpus(self, count: int) -> tuple[int, ...]:
        if not self.spec.gpus:
            return ()
        used = {g for c in self.children if c.process.poll() is None for g in c.gpus}
        free = [g for g in self.spec.gpus if g not in used]
        if len(free) < count:
            raise RuntimeError(f"not enough free GPUs: need {count}, free {free}")
        return tuple(free[:count])

    def _spawn(self, name: str, role: str, cmd: list[str], gpus: tuple[int, ...] = ()
               ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        env = self._env
        if gpus:
            env = dict(env, CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)))
        process = subprocess.Popen(cmd, stdout=self._log_file(name), stderr=subprocess.STDOUT,
                                   env=env, preexec_fn=_die_with_parent)
        child = Child(name, role, process, log_path, gpus)
        self.children.append(child)
        return child

    def _log_file(self, name: str):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    @property
    def admin_redis_url(self) -> str:
        return url_for_role(self.redis_url, self.secret, ADMIN)

    # -- readiness and pools ------------------------------------------------------------------
    def wait_ready(self, prefill: int, decode: int, timeout_s: float = 600.0,
                   on_progress=None) -> None:
        """Until the router sees the pools at these sizes (workers load models meanwhile) and,
        with any decode worker asked for, says it is ready (``GET /ready``: 200)."""
        import httpx

        deadline = time.time() + timeout_s
        last = None
        while time.time() < deadline:
            self._check_children()
            try:
                h = httpx.get(f"{self.router_url}/health", timeout=2).json()
                state = (h["prefill_workers"], h["decode_workers"])
                if state != last and on_progress:
                    on_progress(*state)
                last = state
                if state[0] >= prefill and state[1] >= decode and (
                        decode == 0 or
                        httpx.get(f"{self.router_url}/ready", timeout=2).status_code == 200):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"the cluster was not ready within {timeout_s:.0f}s; "
                           f"see the logs in {self.log_dir}")

    def _check_children(self) -> None:
        """While the cluster starts: a child that exits is an error now (its log names the
        cause), not a readiness timeout minutes later."""
        for child in self.children:
            code = child.process.poll()
            if code is not None and (child.role == "router" or not child.draining):
                tail = child.log_path.read_text(errors="replace").strip().splitlines()[-1:] \
                    if child.log_path.exists() else []
                raise RuntimeError(f"{child.name} exited with code {code} while the cluster was "
                                   f"starting ({' '.join(tail)}); see {child.log_path}")

    def workers(self, role: str) -> list[Child]:
        """Running workers of a role, not counting those draining away."""
        return [c for c in self.children
                if c.role == role and not c.draining and c.process.poll() is None]

    def scale(self, role: str, target: int) -> None:
        """Start or drain workers until ``target`` are running in ``role``."""
        current = self.workers(role)
        for _ in range(target - len(current)):
            child = self.add_worker(role)
            self.log(f"[pdserve] scaling {role}: started {child.name}")
        for child in reversed(current[target:] if target < len(current) else []):
            self.log(f"[pdserve] scaling {role}: draining {child.name}")
            child.terminate()  # drains, deregisters, exits

    def desired_sizes(self) -> dict[str, int]:
        import redis

        try:
            raw = redis.Redis.from_url(self.admin_redis_url, socket_timeout=1).hgetall(
                self.keys.control())
        except Exception:
            return {}
        return desired_from_control(raw, self.log)

    def publish_desired(self, prefill: int, decode: int) -> None:
        import redis

        redis.Redis.from_url(self.admin_redis_url).hset(
            self.keys.control(), mapping={"desired_prefill": prefill, "desired_decode": decode})

    def reap(self) -> None:
        """Forget workers that exited; report unexpected exits."""
        for child in list(self.children):
            code = child.process.poll()
            if code is not None and child.role != "router":
                self.children.remove(child)
                if code != 0 and not (child.draining and code == -signal.SIGTERM):
                    self.log(f"[pdserve] {child.name} exited with code {code} "
                             f"(log: {child.log_path})")

    # -- stop ---------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain and stop workers, then the router, then Redis; kill what does not exit."""
        workers = [c for c in self.children if c.role != "router"]
        routers = [c for c in self.children if c.role == "router"]
        for group in (workers, routers):
            for child in group:
                child.terminate()
            deadline = time.time() + timeout_s
            for child in group:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        if self._redis is not None:
            self._redis.stop()
