"""The peer half of issue 16: a Rust P/D router, sglang-router, measured exactly as
router_bench measures ours, for a side-by-side row in the same run.

Per run: the instant mock SGLang prefill and decode servers (benchmarks/sglang_mock_workers.py,
one process each, pinned like router_bench's mocks), then ``sglang_router.launch_router`` in
PD-disaggregation mode with the given policy (cache_aware by default, the issue's quoted mode),
pinned like our router; then the same workload (router_workload.chat_bodies), warm-up, and
router_bench.measure_window at 1 client and at ``--clients``. The added-latency baseline is the
same request sent straight to the decode mock and, at the same time, to the prefill mock (what
the router does per request), with the bootstrap fields it injects, on one client of the load
generator's own HTTP code; its p50/p99 are subtracted as router_bench does.

sglang-router is not a dependency of this project (``pip install sglang-router==0.3.2``); it is
one Python process hosting a tokio runtime, whose worker threads follow the CPUs it may use, so
its thread count is noted in each row. It leaves Nagle's algorithm on for the connections it
accepts, so each streamed reply after the first on a keep-alive connection waits ~40 ms for the
client's delayed ACK (benchmarks/nodelay_shim.py); the default rows keep that, ``--nodelay``
adds rows with TCP_NODELAY forced on, to show its cost without the wait.

    python -m benchmarks.router_peer [--policy cache_aware --policy round_robin] \\
        [router_bench options: --duration 3 --serial-requests 100 --router-cpus 0 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import process_cpu as pc
from benchmarks import router_bench as rb
from benchmarks import router_stack as stack
from benchmarks.nodelay_shim import shim_path
from benchmarks.report import machine_info, print_table, save_json
from benchmarks.router_workload import (
    OUTPUT_TOKENS,
    chat_bodies,
    encode_request,
    loop_kind,
    read_response,
    run_async,
    run_load,
    sse_events,
)
from benchmarks.serving_metrics import percentile
from deploy.redis_server import free_port

PEER_PACKAGE = "sglang-router"
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")
HOST = "127.0.0.1"


def peer_version() -> str:
    try:
        return importlib.metadata.version(PEER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{PEER_PACKAGE} is not installed: pip install "
                           f"{PEER_PACKAGE}==0.3.2 (it is no dependency of pdserve)") from None


def start_sglang_mock(role: str, cpus: list[int] | None, model: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sglang_mock_workers", "--role", role,
                             "--port", "0", "--model", model], cwd=rb.ROOT,
                            env=stack.tree_env(rb.ROOT), stdout=subprocess.PIPE, text=True,
                            preexec_fn=stack.affinity(cpus))
    stack.SPAWNED.add(proc.pid)
    for line in proc.stdout:
        if line.startswith("SGLANG_MOCK_READY"):
            return proc, int(line.split("port=")[1])
    raise RuntimeError(f"sglang mock {role} exited before it was ready ({proc.wait()})")


def mock_report(port: int) -> dict:
    """The (method, path) counts a mock saw and the first generation request's fields."""
    import httpx

    return httpx.get(f"http://{HOST}:{port}/_mock/paths", timeout=5).json()


def thread_names(pid: int) -> dict[str, int]:
    """Thread name -> count of a process (Linux /proc); tokio names its workers
    ``tokio-runtime-w``."""
    names: collections.Counter[str] = collections.Counter()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
    except OSError:
        pass
    return dict(names)


@dataclass
class PeerRouter:
    """``python -m sglang_router.launch_router --pd-disaggregation`` in front of one prefill and
    one decode server. At startup it asks each for /health, /server_info and /model_info, and
    tries to fetch the reported model's tokenizer from HuggingFace (it fails offline, warns
    and goes on: the HTTP P/D path forwards requests without tokenizing them)."""

    prefill_port: int
    decode_port: int
    policy: str
    cpus: list[int] | None
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # its Prometheus listener (always on)
    # Only injected into requests (decode servers would dial it for the KV); nothing listens.
    bootstrap_port: int = field(default_factory=free_port)
    nodelay: bool = False  # TCP_NODELAY forced on its accepted sockets (benchmarks/nodelay_shim.py)
    process: subprocess.Popen | None = None
    log: Path | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
                "--prefill", f"http://{HOST}:{self.prefill_port}", str(self.bootstrap_port),
                "--decode", f"http://{HOST}:{self.decode_port}", "--policy", self.policy,
                "--host", HOST, "--port", str(self.port),
                "--prometheus-host", HOST, "--prometheus-port", str(self.metrics_port),
                # warn: no line per request (about 1 kB a run: the tokenizer download below).
                "--log-level", "warn",
                # Workers are up before it starts: find them in 1 s, not its default 30 s.
                "--worker-startup-check-interval", "1",
                # Its default waits up to 180 s for in-flight requests on SIGTERM.
                "--shutdown-grace-period-secs", "2"]

    def start(self, body: dict, timeout_s: float = 60.0) -> PeerRouter:
        fd, name = tempfile.mkstemp(prefix="router_peer_", suffix=".log")
        self.log = Path(name)
        env = stack.tree_env(rb.ROOT)
        if self.nodelay:
            env["LD_PRELOAD"] = str(shim_path())
        self.process = subprocess.Popen(self.command(), cwd=rb.ROOT, env=env, stdout=fd, stderr=fd,
                                        preexec_fn=stack.affinity(self.cpus))
        os.close(fd)
        stack.SPAWNED.add(self.process.pid)
        self._wait_ready(body, timeout_s)
        return self

    def _wait_ready(self, body: dict, timeout_s: float) -> None:
        """Ready when a (non-streamed) request goes through 3 times in a row: it registers
        workers in the background after it starts listening, and answers 503 until then."""
        import httpx

        body = {**body, "stream": False, "max_tokens": 1}
        deadline, streak = time.time() + timeout_s, 0
        while time.time() < deadline and streak < 3:
            if self.process.poll() is not None:
                raise RuntimeError(f"sglang-router exited ({self.process.returncode}): "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                r = httpx.post(f"http://{HOST}:{self.port}{rb.CHAT_PATH}", json=body, timeout=5)
                streak = streak + 1 if r.status_code == 200 else 0
            except httpx.HTTPError:
                streak = 0
            time.sleep(0.05 if streak else 0.2)
        if streak < 3:
            raise RuntimeError(f"sglang-router not ready in {timeout_s}s: "
                               f"{self.log.read_text()[-3000:]}")
        stack.SPAWNED.update(pc.tree_pids(self.process.pid))

    def stop(self) -> None:
        stack.stop_process(self.process)
        if self.log is not None:
            self.log.unlink(missing_ok=True)


def with_bootstrap(body: dict, bootstrap_port: int, rng: random.Random) -> dict:
    """The body as the router forwards it to both servers: the prefill's bootstrap address and
    a random room (a 63-bit id) added."""
    return {**body, "bootstrap_host": HOST, "bootstrap_port": bootstrap_port,
            "bootstrap_room": rng.randrange(2**63)}


async def direct_pairs(prefill_port: int, decode_port: int, bodies: list[dict], n: int
                       ) -> tuple[list[float], dict[str, int]]:
    """The added-latency baseline: run_load's 1-client loop, each request written to the
    prefill and the decode mock at once (one keep-alive connection each), timed until both
    replies were read, the decode's streamed to ``[DONE]``."""
    pairs = [(encode_request(HOST, prefill_port, rb.CHAT_PATH, b),
              encode_request(HOST, decode_port, rb.CHAT_PATH, b)) for b in bodies]
    p_reader, p_writer = await asyncio.open_connection(HOST, prefill_port)
    d_reader, d_writer = await asyncio.open_connection(HOST, decode_port)
    latencies, errors = [], {}
    try:
        for i in range(n):
            p_raw, d_raw = pairs[i % len(pairs)]
            t0 = time.perf_counter()
            p_writer.write(p_raw)
            d_writer.write(d_raw)
            # Sequential reads lose nothing: both replies buffer as they arrive.
            p_status, _, _ = await read_response(p_reader)
            d_status, _, d_body = await read_response(d_reader)
            elapsed = time.perf_counter() - t0
            if p_status == 200 and d_status == 200 and sse_events(d_body)[1]:
                latencies.append(elapsed)
            else:
                key = f"{p_status}/{d_status}"
                errors[key] = errors.get(key, 0) + 1
    finally:
        p_writer.close()
        d_writer.close()
    return latencies, errors


def probe_usage(port: int, body: dict) -> dict | None:
    """router_bench's usage probe; None if the router does not pass usage through."""
    try:
        return rb.probe_usage(port, body)
    except RuntimeError:
        return None


def measure_peer_run(args, run_id: int, policy: str = "cache_aware", nodelay: bool = False) -> dict:
    """One sglang-router run: a row shaped like router_bench.measure_run's, plus ``peer``,
    ``policy`` and what the run saw of the router (threads, command, the mocks' paths).
    ``nodelay``: run it with TCP_NODELAY forced on its accepted sockets (benchmarks/
    nodelay_shim.py says why); the row's label and tree then end in ``+nodelay``."""
    version = peer_version()
    spawned: list = []
    try:
        p_mock, p_port = start_sglang_mock("prefill", args.others_cpus, args.model)
        spawned.append(p_mock)
        d_mock, d_port = start_sglang_mock("decode", args.others_cpus, args.model)
        spawned.append(d_mock)
        bodies = chat_bodies(args.model, count=args.bodies)
        router = PeerRouter(p_port, d_port, policy, args.router_cpus, nodelay=nodelay)
        spawned.append(router)
        router.start(bodies[0])
        threads = thread_names(router.process.pid)
        usage = probe_usage(router.port, bodies[0])
        tokens = (usage or {}).get("completion_tokens", OUTPUT_TOKENS)
        rng = random.Random(run_id)
        direct, direct_errors = run_async(direct_pairs(
            p_port, d_port, [with_bootstrap(b, router.bootstrap_port, rng) for b in bodies],
            args.direct_requests))
        requests = [encode_request(HOST, router.port, rb.CHAT_PATH, b) for b in bodies]
        common = dict(router_pid=router.process.pid, mock_pids=[p_mock.pid, d_mock.pid],
                      redis_pid=None, port=router.port, requests=requests,
                      tokens_per_request=tokens)
        run_async(run_load(HOST, router.port, requests, 4, 10**6, args.warmup_s))
        serial = rb.measure_window(clients=1, max_requests=args.serial_requests,
                                   max_s=args.serial_max_s, **common)
        loaded = rb.measure_window(clients=args.clients, max_requests=args.max_requests,
                                   max_s=args.duration, **common)
        threads_after = thread_names(router.process.pid)  # tokio adds blocking threads lazily
        paths = {"prefill": mock_report(p_port), "decode": mock_report(d_port)}
        log_bytes = router.log.stat().st_size
    finally:
        for proc in reversed(spawned):
            proc.stop() if isinstance(proc, PeerRouter) else stack.stop_process(proc)
    variant = f"{policy} +nodelay" if nodelay else policy
    row = {"tree": f"{PEER_PACKAGE} {version} {variant}", "label": f"sglang-router {variant}",
           "commit": f"{PEER_PACKAGE}=={version}", "router_processes": 1,
           # The mocks have no tokenizer: the usage they report is a character estimate.
           "prompt_tokens": None,
           "mock_prompt_tokens_estimate": (usage or {}).get("prompt_tokens"),
           "completion_tokens": tokens, "serial": serial, "loaded": loaded,
           "peer": True, "policy": policy, "nodelay_shim": nodelay,
           "usage_passed_through": usage is not None,
           "router_threads": threads, "router_threads_after": threads_after,
           "router_tokio_workers": threads.get("tokio-runtime-w", 0),
           "router_command": " ".join(router.command()[1:]),
           "router_log_bytes": log_bytes,
           "mock_paths": {role: r["paths"] for role, r in paths.items()},
           "mock_first_generation": {role: r["first_generation"] for role, r in paths.items()}}
    if not direct:
        row["direct_note"] = f"direct baseline failed: {direct_errors}"
    else:
        d50, d99 = 1e3 * statistics.median(direct), 1e3 * percentile(sorted(direct), 99)
        row.update(direct_p50_ms=d50, direct_p99_ms=d99,
                   added_p50_ms=serial["latency_p50_ms"] - d50,
                   added_p99_ms=serial["latency_p99_ms"] - d99)
        if direct_errors:
            row["direct_note"] = f"direct baseline errors: {direct_errors}"
    return row


def parse_args(argv=None):
    """This module's options; the rest are router_bench's shared ones (--tree, --procs,
    --decision do not apply here)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", action="append", choices=POLICIES, default=None,
                   help="sglang-router policy to measure (repeatable; default: cache_aware "
                        "and round_robin)")
    p.add_argument("--nodelay", action="store_true",
                   help="also measure each policy with TCP_NODELAY forced on the router's "
                        "accepted sockets (an LD_PRELOAD shim; benchmarks/nodelay_shim.py)")
    p.add_argument("--out", type=Path, default=rb.ROOT / "benchmarks/results/router_peer.json",
                   help="JSON output")
    if "-h" in argv or "--help" in argv:
        print(p.format_help())
        print("router_bench's shared options follow.\n")
    own, rest = p.parse_known_args(argv)
    args = rb.parse_args(rest)
    args.policy = own.policy or ["cache_aware", "round_robin"]
    args.out = own.out
    args.nodelay = own.nodelay
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    context = {"load_average_before": os.getloadavg(), "machine": machine_info(),
               "loadgen_loop": loop_kind(), "args": {k: str(v) for k, v in vars(args).items()}}
    rows = []
    for round_ in range(args.repeats):
        for policy in args.policy:
            for nodelay in (False, True) if args.nodelay else (False,):
                print(f"round {round_ + 1}/{args.repeats}: measuring sglang-router --policy "
                      f"{policy}{' +nodelay' if nodelay else ''}...", flush=True)
                row = measure_peer_run(args, len(rows), policy, nodelay)
                row["round"] = round_
                rows.append(row)
    n = args.clients
    columns = ["router", "procs", "CPU µs/req @1", "µs/token @1", f"CPU µs/req @{n}",
               f"µs/token @{n}", "added p50/p99 ms @1", f"req/s @{n}", f"p50/p99 ms @{n}",
               f"loadgen µs/req @{n}", f"mocks µs/req @{n}", "steal % @1/@N",
               "others' cores @1/@N", "errors"]
    medians = rb.median_rows(rows) if args.repeats > 1 else rows
    table = print_table(columns, rb.result_rows(medians))
    first = rows[0]
    print(f"command: {first['router_command']}")
    print(f"tokio workers: {first['router_tokio_workers']}; threads: {first['router_threads']}")
    for role, paths in first["mock_paths"].items():
        print(f"{role} mock saw: {paths}")
    notes = [f"{r['label']}: {r['direct_note']}" for r in rows if "direct_note" in r]
    for note in notes:
        print("note:", note)
    save_json(args.out, {"rows": rows, "medians": medians if args.repeats > 1 else None,
                         "table": table, "notes": notes, **context,
                         "added_latency_method": "router p50/p99 at 1 client minus p50/p99 of "
                                                 "the same request sent straight to the prefill "
                                                 "and decode mocks at once, same run"})


if __name__ == "__main__":
    main()
