"""Router cost per streamed request, for one or more source trees side by side (issue 16).

For each tree (``--tree``, repeatable; default this checkout) and each router process count
(``--procs``, default 1 and 2): Redis, the tree's instant mock workers (benchmarks/mock_workers.py,
real gRPC; prefill and decode mocks in two processes) and the tree's router
(``deploy.cli router --model demo``, KV-aware P/D: ``--local-prefill-threshold 0``) are
started, then driven with the workload of benchmarks/router_workload.py (streaming chat,
16 output tokens, ~2,100-byte bodies, 16 system prompts sharing a 1,500-character prefix).

Reported per row, each over its own measurement window only:
- router CPU (user+sys summed over the router's process tree) per request and per streamed
  token, at 1 client and at ``--clients`` (64);
- added latency at 1 client: router end-to-end p50/p99 minus the p50/p99 of the same prefill +
  decode made straight to the same mocks, on the carrier the tree's router uses (gRPC calls or
  outputs-socket frames), in the same run (benchmarks/router_direct.py);
- req/s at 64 clients; the load generator's, the mocks' and Redis's CPU per request (they share
  the cores); the VM's steal time and the CPU others used in the window; load average before.
A tree whose router has no ``--workers`` gets no 2-process row (noted). Ratios are against the
first tree at the same process count, and 2 processes against 1 of the same tree. ``--peer
cache_aware`` adds a Rust P/D router's row in each round, measured the same way
(benchmarks/router_peer.py: sglang-router in front of instant mock SGLang workers).

``--repeats N`` measures every (process count, tree) N times, the trees alternating within
each round, and reports the median of each figure with its range over the rounds as well as
every run: on a shared VM a single run can be off by more than the change being measured
(session 11 settled its A/B that way, by hand).

    python -m benchmarks.router_bench --tree . --tree /work/baseline [--repeats 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks import process_cpu as pc
from benchmarks import router_stack as stack
from benchmarks.report import machine_info, print_table, save_json
from benchmarks.router_workload import (
    OUTPUT_TOKENS,
    chat_bodies,
    encode_request,
    loop_kind,
    run_async,
    run_load,
    usage_of,
)
from benchmarks.serving_metrics import percentile
from common import defaults

ROOT = Path(__file__).resolve().parents[1]
CHAT_PATH = "/v1/chat/completions"


def probe_usage(port: int, body: dict) -> dict:
    """One request with usage included: the templated prompt's token count and 16 outputs."""
    import httpx

    body = {**body, "stream_options": {"include_usage": True}}
    r = httpx.post(f"http://127.0.0.1:{port}{CHAT_PATH}", json=body, timeout=60)
    usage = usage_of(r.content) if r.status_code == 200 else None
    if usage is None:
        raise RuntimeError(f"probe request failed: {r.status_code} {r.text[:500]}")
    return usage


def measure_window(router_pid: int, mock_pids: list[int], redis_pid: int | None, port: int,
                   requests: list[bytes], clients: int, max_requests: int, max_s: float,
                   tokens_per_request: int) -> dict:
    """Run one load phase and account every CPU second of it."""
    router = pc.TreeCpu([router_pid]).start()
    mocks = pc.TreeCpu(mock_pids).start()
    redis = pc.TreeCpu([redis_pid] if redis_pid else []).start()
    machine = pc.MachineWindow().start()
    load0 = pc.self_cpu_seconds()
    res = run_async(run_load("127.0.0.1", port, requests, clients, max_requests, max_s))
    load_s = pc.self_cpu_seconds() - load0
    machine.stop()
    for t in (router, mocks, redis):
        t.stop()
    ok = max(res.ok, 1)
    ours_s = router.seconds + mocks.seconds + redis.seconds + load_s
    lat = sorted(res.latencies_s) or [float("nan")]
    return {
        "clients": clients, "requests_ok": res.ok, "errors": res.errors, "wall_s": res.wall_s,
        "req_per_s": res.ok / res.wall_s, "sse_events_per_request": res.events / ok,
        "router_processes": router.processes, "router_processes_lost": router.lost,
        "router_cpu_s": router.seconds,
        "router_cpu_us_per_request": 1e6 * router.seconds / ok,
        "router_cpu_us_per_token": 1e6 * router.seconds / (ok * tokens_per_request),
        "router_cpu_cores": router.seconds / res.wall_s,
        "loadgen_cpu_us_per_request": 1e6 * load_s / ok,
        "mocks_cpu_us_per_request": 1e6 * mocks.seconds / ok,
        "redis_cpu_us_per_request": 1e6 * redis.seconds / ok,
        "latency_p50_ms": 1e3 * statistics.median(lat), "latency_p99_ms": 1e3 * percentile(lat, 99),
        "steal_fraction": machine.steal, "busy_fraction": machine.busy,
        # The rest of the machine's busy time in the window: the other tenants of the cores.
        "others_cpu_cores": (None if machine.busy is None else
                             machine.busy * (os.cpu_count() or 1) - ours_s / machine.wall_s),
    }


def measure_run(tree: Path, procs: int, redis: stack.RedisProcess, args, run_id: int) -> dict:
    prefix = f"{defaults.REDIS_KEY_PREFIX}rbench{os.getpid()}r{run_id}:"  # inside the ACL's keys
    spawned: list = []
    try:
        p_mock, p_addr = stack.start_mock(tree, redis.url, prefix, 1, 0, args.others_cpus)
        spawned.append(p_mock)
        d_mock, d_addr = stack.start_mock(tree, redis.url, prefix, 0, 1, args.others_cpus)
        spawned.append(d_mock)
        router = stack.RouterProcess(
            tree, redis.url, prefix, procs, args.router_cpus,
            extra=["--model", args.model, "--policy", "kv_aware",
                   "--local-prefill-threshold", "0"])
        spawned.append(router)
        router.start()
        bodies = chat_bodies(args.model, count=args.bodies)
        usage = probe_usage(router.port, bodies[0])
        tokens = usage.get("completion_tokens", OUTPUT_TOKENS)
        direct = stack.direct_latencies(tree, p_addr["prefill"], d_addr["decode"],
                                        usage["prompt_tokens"], args.direct_requests,
                                        d_addr.get("decode_outputs", ""),
                                        p_addr.get("prefill_outputs", ""))
        requests = [encode_request("127.0.0.1", router.port, CHAT_PATH, b) for b in bodies]
        common = dict(router_pid=router.process.pid, mock_pids=[p_mock.pid, d_mock.pid],
                      redis_pid=redis.process.pid, port=router.port, requests=requests,
                      tokens_per_request=tokens)
        run_async(run_load("127.0.0.1", router.port, requests, 4, 10**6, args.warmup_s))
        serial = measure_window(clients=1, max_requests=args.serial_requests,
                                max_s=args.serial_max_s, **common)
        loaded = measure_window(clients=args.clients, max_requests=args.max_requests,
                                max_s=args.duration, **common)
    finally:
        for proc in reversed(spawned):
            proc.stop() if isinstance(proc, stack.RouterProcess) else stack.stop_process(proc)
    row = {"tree": str(tree), "label": tree.name, "commit": stack.git_describe(tree),
           "router_processes": procs, "prompt_tokens": usage["prompt_tokens"],
           "completion_tokens": tokens, "serial": serial, "loaded": loaded}
    if isinstance(direct, str):
        row["direct_note"] = direct
    else:
        d50, d99 = 1e3 * statistics.median(direct), 1e3 * percentile(sorted(direct), 99)
        row.update(direct_p50_ms=d50, direct_p99_ms=d99,
                   added_p50_ms=serial["latency_p50_ms"] - d50,
                   added_p99_ms=serial["latency_p99_ms"] - d99)
    return row


RATIO_KEYS = (("CPU/req @1", lambda r: r["serial"]["router_cpu_us_per_request"]),
              ("CPU/req @N", lambda r: r["loaded"]["router_cpu_us_per_request"]),
              ("added p50", lambda r: r.get("added_p50_ms")),
              ("req/s @N", lambda r: r["loaded"]["req_per_s"]))


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratio_rows(rows: list[dict]) -> list[list]:
    """Each row against the first tree's row of the same process count, and against its own
    tree's 1-process row."""
    first = {}
    one_proc = {}
    for r in rows:
        first.setdefault(r["router_processes"], r)
        if r["router_processes"] == 1:
            one_proc[r["tree"]] = r
    out = []
    for r in rows:
        for base_name, base in ((f"vs {first[r['router_processes']]['label']}",
                                 first[r["router_processes"]]),
                                ("vs 1 proc", one_proc.get(r["tree"]))):
            if base is None or base is r:
                continue
            out.append([r["label"], r["router_processes"], base_name,
                        *(_x(ratio(get(r), get(base))) for _, get in RATIO_KEYS)])
    return out


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def result_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        s, lo = r["serial"], r["loaded"]
        errors = sum(s["errors"].values()) + sum(lo["errors"].values())
        out.append([r["label"], r["router_processes"], _f(s["router_cpu_us_per_request"]),
                    _f(s["router_cpu_us_per_token"]), _f(lo["router_cpu_us_per_request"]),
                    _f(lo["router_cpu_us_per_token"]),
                    f"{_f(r.get('added_p50_ms'), '.2f')} / {_f(r.get('added_p99_ms'), '.2f')}",
                    _f(lo["req_per_s"]), f"{lo['latency_p50_ms']:.1f} / {lo['latency_p99_ms']:.1f}",
                    _f(lo["loadgen_cpu_us_per_request"]), _f(lo["mocks_cpu_us_per_request"]),
                    f"{_f(100 * (s['steal_fraction'] or 0), '.1f')} / "
                    f"{_f(100 * (lo['steal_fraction'] or 0), '.1f')}",
                    f"{_f(s['others_cpu_cores'], '.2f')} / {_f(lo['others_cpu_cores'], '.2f')}",
                    errors])
    return out


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (tree, process count), in first-seen order: each number of ``serial``,
    ``loaded`` and the added latencies the median over the repeats (errors: the sum), with
    ``spread`` holding (min, max) of the figures the tables show."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["tree"], r["router_processes"]), []).append(r)
    out = []
    for runs in groups.values():
        first = runs[0]
        merged = {k: v for k, v in first.items() if k not in ("serial", "loaded", "round")}
        merged["repeats"] = len(runs)
        for phase in ("serial", "loaded"):
            merged[phase] = {}
            for key, value in first[phase].items():
                values = [run[phase][key] for run in runs]
                if key == "errors":
                    merged[phase][key] = {k: sum(v.get(k, 0) for v in values)
                                          for k in set().union(*values)}
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    merged[phase][key] = statistics.median(v for v in values if v is not None) \
                        if any(v is not None for v in values) else None
                else:
                    merged[phase][key] = value
        for key in ("direct_p50_ms", "direct_p99_ms", "added_p50_ms", "added_p99_ms"):
            values = [run[key] for run in runs if run.get(key) is not None]
            merged[key] = statistics.median(values) if values else None
        merged["spread"] = {name: (min(vals), max(vals)) for name, get in RATIO_KEYS
                            if (vals := [v for run in runs if (v := get(run)) is not None])}
        out.append(merged)
    return out


def spread_rows(medians: list[dict]) -> list[list]:
    return [[r["label"], r["router_processes"], r["repeats"],
             *(f"{_f(lo, '.2f' if 'added' in name else '.0f')}-"
               f"{_f(hi, '.2f' if 'added' in name else '.0f')}"
               for name, _ in RATIO_KEYS for lo, hi in [r["spread"].get(name, (None, None))])]
            for r in medians]


def cpu_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def measure_peers(args, round_: int, run_id: int) -> list[dict]:
    """The --peer rows of one round (sglang-router, one process: it has no --workers)."""
    from benchmarks.router_peer import measure_peer_run

    rows = []
    for policy in args.peer:
        for nodelay in (False, True) if args.peer_nodelay else (False,):
            print(f"round {round_ + 1}/{args.repeats}: measuring sglang-router {policy}"
                  f"{' +nodelay' if nodelay else ''}...", flush=True)
            row = measure_peer_run(args, run_id + len(rows), policy, nodelay=nodelay)
            row["round"] = round_
            rows.append(row)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, action="append", default=None,
                   help="source tree to measure (repeatable; ratios are against the first); "
                        "default: this checkout")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2],
                   help="router process counts to measure (>1 needs the tree's --workers)")
    p.add_argument("--model", default="demo", help="router --model (tokenizer, chat template)")
    p.add_argument("--bodies", type=int, default=8192,
                   help="distinct request bodies, cycled (enough that a window rarely repeats "
                        "one: only the 16 system prompts recur, as in real traffic)")
    p.add_argument("--serial-requests", type=int, default=500,
                   help="requests in the 1-client window")
    p.add_argument("--serial-max-s", type=float, default=30.0,
                   help="the 1-client window stops after this many seconds at most")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients of the rate window")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of the many-client window")
    p.add_argument("--max-requests", type=int, default=200_000,
                   help="the many-client window stops after this many requests at most")
    p.add_argument("--direct-requests", type=int, default=300,
                   help="direct-to-mock gRPC requests of the added-latency baseline")
    p.add_argument("--warmup-s", type=float, default=2.0, help="seconds of warm-up load per run")
    p.add_argument("--router-cpus", type=cpu_list, default=None,
                   help="pin the router processes to these cores, e.g. 0 (default: unpinned)")
    p.add_argument("--others-cpus", type=cpu_list, default=None,
                   help="pin mocks and Redis to these cores (default: unpinned); the load "
                        "generator is this process: pin it with taskset")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds over every (process count, tree), trees alternating; the "
                        "tables then show medians, their ranges and every run")
    p.add_argument("--peer", action="append", default=[], metavar="POLICY",
                   help="also measure sglang-router (a Rust P/D router; pip install "
                        "sglang-router==0.3.2) with this policy, e.g. cache_aware, in front of "
                        "mock SGLang workers, in every round beside the 1-process rows "
                        "(benchmarks/router_peer.py; repeatable)")
    p.add_argument("--peer-nodelay", action="store_true",
                   help="measure each --peer also with TCP_NODELAY forced on its accepted "
                        "sockets (benchmarks/nodelay_shim.py: without it every streamed reply "
                        "after a connection's first waits ~40 ms for a delayed ACK)")
    p.add_argument("--decision", action="store_true",
                   help="also time the routing decision in process (this checkout's router)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/router_i16.json",
                   help="JSON output")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    context = {"load_average_before": os.getloadavg(), "machine": machine_info(),
               "args": {k: str(v) for k, v in vars(args).items()}}
    before_all = pc.snapshot_all()
    redis = stack.RedisProcess(args.others_cpus).start()
    context["redis"] = redis.kind
    context["loadgen_loop"] = loop_kind()
    supports = {t: stack.router_supports_workers(t) for t in trees}
    rows, notes = [], []
    started = time.time()
    try:
        for round_ in range(args.repeats):
            for procs in args.procs:
                for tree in trees:
                    if procs > 1 and not supports[tree]:
                        if round_ == 0:
                            notes.append(f"{tree.name}: no {procs}-process row, its router "
                                         f"has no --workers")
                        continue
                    print(f"round {round_ + 1}/{args.repeats}: measuring {tree} with {procs} "
                          f"router process(es)...", flush=True)
                    row = measure_run(tree, procs, redis, args, len(rows))
                    row["round"] = round_
                    rows.append(row)
                if procs == 1:
                    rows += measure_peers(args, round_, len(rows))
    finally:
        redis.stop()
    context["top_other_processes"] = pc.top_others(before_all, pc.snapshot_all(),
                                                   stack.SPAWNED | {os.getpid()})
    context["elapsed_s"] = time.time() - started
    for r in rows:
        if "direct_note" in r:
            notes.append(f"{r['label']}: {r['direct_note']}")
    n = args.clients
    columns = ["tree", "procs", "CPU µs/req @1", "µs/token @1", f"CPU µs/req @{n}",
               f"µs/token @{n}", "added p50/p99 ms @1", f"req/s @{n}", f"p50/p99 ms @{n}",
               f"loadgen µs/req @{n}", f"mocks µs/req @{n}", "steal % @1/@N",
               "others' cores @1/@N", "errors"]
    medians = median_rows(rows) if args.repeats > 1 else rows
    spread = runs_table = ""
    if args.repeats > 1:
        print("every run:")
        runs_table = print_table(["round", *columns], [
            [r["round"] + 1, *cells] for r, cells in zip(rows, result_rows(rows), strict=True)])
        print(f"medians over {args.repeats} rounds:")
    table = print_table(columns, result_rows(medians))
    if args.repeats > 1:
        print("ranges over the rounds (min-max):")
        spread = print_table(["tree", "procs", "runs", *(k for k, _ in RATIO_KEYS)],
                             spread_rows(medians))
    ratios = print_table(["tree", "procs", "against", *(k for k, _ in RATIO_KEYS)],
                         ratio_rows(medians)) if len(medians) > 1 else ""
    print(f"load average before: {context['load_average_before']}; redis: {redis.kind}")
    for other in context["top_other_processes"]:
        print(f"  also running: {other['cpu_s']:.1f} CPU s  {other['cmd']}")
    for note in notes:
        print("note:", note)
    payload = {"rows": rows, "medians": medians if args.repeats > 1 else None,
               "notes": notes, "table": table, "runs_table": runs_table, "spread": spread,
               "ratios": ratios, **context,
               "added_latency_method": "router p50/p99 at 1 client minus p50/p99 of direct "
                                       "Prefill+Decode gRPC calls to the same mocks, same run"}
    if args.decision:
        from benchmarks.router_decision import bench_decision

        payload["decision"] = bench_decision(8, 1_000_000, 4096, 500)
    save_json(args.out, payload)


if __name__ == "__main__":
    main()
