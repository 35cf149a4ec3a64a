"""Router overhead: routing decision time, added latency, and maximum request rate.

1. Decision time (in process): ``Dispatcher.plan`` for a 4k-token prompt (hashing its 256
   blocks included) with 8 prefill workers and 1M blocks in the prefix index.
2. Added latency and max rate (real processes): the router (uvicorn, one process) in front of
   instant mock workers (benchmarks/mock_workers.py, real gRPC and Redis), driven over HTTP.
   Added latency = router end-to-end minus the same prefill+decode gRPC calls made directly.

    python -m benchmarks.router_bench [--out benchmarks/results/router.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import machine_info, print_table, save_json
from benchmarks.serving_metrics import percentile
from deploy.redis_server import LocalRedis, free_port


# -- 1. decision time ---------------------------------------------------------------------------
def bench_decision(num_workers: int, num_blocks: int, prompt_tokens: int, repeats: int) -> dict:
    from common.redis_schema import Keys, WorkerRecord
    from common.sampling_params import SamplingParams
    from router.config import RouterConfig
    from router.dispatcher import Dispatcher, GenerateRequest
    from router.load_tracker import LoadTracker
    from router.metrics import RouterMetrics
    from router.prefix_index import PrefixIndex
    from router.registry import RegistryView
    from router.worker_clients import WorkerClients

    config = RouterConfig()
    registry = RegistryView(redis=None, keys=Keys())
    now = time.time()
    registry.workers = {
        f"p{i}": WorkerRecord(f"p{i}", "prefill", f"h:{i}", "m", "d", 1, 16, 10**6,
                              heartbeat_at=now) for i in range(num_workers)}
    registry.workers["d0"] = WorkerRecord("d0", "decode", "h:99", "m", "d", 1, 16, 10**6,
                                          heartbeat_at=now)
    index = PrefixIndex()
    rng = random.Random(0)
    per_worker = num_blocks // num_workers
    for i in range(num_workers):
        index.add(f"p{i}", (rng.getrandbits(64) for _ in range(per_worker)))
    dispatcher = Dispatcher(config, registry, index, WorkerClients(), RouterMetrics(),
                            LoadTracker())
    prompts = [[rng.randrange(50000) for _ in range(prompt_tokens)] for _ in range(8)]
    # Half of each prompt is cached on one worker, so overlap walks are real.
    for n, prompt in enumerate(prompts):
        hashes = dispatcher.hasher.hash_prompt(prompt)
        index.add(f"p{n % num_workers}", hashes[: len(hashes) // 2])
    params = SamplingParams(max_tokens=16)
    times = []
    for i in range(repeats):
        req = GenerateRequest(f"r{i}", prompts[i % len(prompts)], params)
        started = time.perf_counter()
        plan = dispatcher.plan(req)
        times.append(time.perf_counter() - started)
        assert plan.prefill is not None
    return {"workers": num_workers, "indexed_blocks": index.num_blocks(),
            "prompt_tokens": prompt_tokens, "p50_ms": 1e3 * statistics.median(times),
            "p99_ms": 1e3 * percentile(times, 99), "repeats": repeats}


# -- 2. added latency and max rate -------------------------------------------------------------
async def _direct_latency(prefill_addr: str, decode_addr: str, prompt: list[int], n: int
                          ) -> list[float]:
    import grpc

    from proto import API_VERSION, pb, pb_grpc
    from router.decode_outputs import DecodeOutputs

    sp = pb.SamplingParams(max_tokens=16, temperature=0, top_p=1)
    out = []
    async with grpc.aio.insecure_channel(prefill_addr) as pc, \
            grpc.aio.insecure_channel(decode_addr) as dc:
        p, d = pb_grpc.WorkerStub(pc), pb_grpc.WorkerStub(dc)
        outputs = DecodeOutputs(lambda address: d)
        for i in range(n):
            started = time.perf_counter()
            first = await p.Prefill(pb.PrefillRequest(api_version=API_VERSION,
                                                      request_id=f"d{i}",
                                                      prompt_token_ids=prompt, sampling=sp))
            inbox = await outputs.subscribe(decode_addr, f"d{i}")
            await d.Submit(pb.DecodeRequest(
                api_version=API_VERSION, request_id=f"d{i}", prompt_token_ids=prompt,
                sampling=sp, router_id=outputs.router_id,
                pull_kv=pb.PulledKV(first_token=first.first_token, kv_handle=first.kv_handle)))
            deadline = asyncio.get_running_loop().time() + 30
            while not any(o.finish_reason for o in await inbox.take(deadline)):
                pass
            outputs.unsubscribe(f"d{i}", inbox)
            out.append(time.perf_counter() - started)
        await outputs.close()
    return out


async def _http_load(url: str, prompt: list[int], concurrency: int, duration_s: float
                     ) -> tuple[list[float], int]:
    import httpx

    body = {"model": "random:tiny-llama", "prompt": prompt, "max_tokens": 16, "temperature": 0}
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def user():
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    r = await client.post("/v1/completions", json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        await asyncio.gather(*(user() for _ in range(concurrency)))
    return latencies, errors


def bench_overhead(redis_url: str, duration_s: float) -> dict:
    import httpx

    root = Path(__file__).resolve().parents[1]
    prefix = f"bench{os.getpid()}:"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    mocks = subprocess.Popen([sys.executable, "-m", "benchmarks.mock_workers", redis_url, prefix,
                              "1", "1"], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    addrs = {}
    for line in mocks.stdout:
        if line.startswith("MOCK "):
            _, role, addr = line.split()
            addrs[role] = addr
        if line.startswith("MOCKS_READY"):
            break
    port = free_port()
    router = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "router", "--redis", redis_url, "--redis-prefix",
         prefix, "--port", str(port), "--model", "random:tiny-llama", "--log-level", "warning",
         "--local-prefill-threshold", "0"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                h = httpx.get(f"{url}/health", timeout=1).json()
                if h["prefill_workers"] and h["decode_workers"]:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        # 512 tokens, all inside random:tiny-llama's 512-token vocabulary (the router checks).
        prompt = [100 + i % 400 for i in range(512)]
        direct = asyncio.run(_direct_latency(addrs["prefill"], addrs["decode"], prompt, 200))
        asyncio.run(_http_load(url, prompt, 1, 1.0))  # warm-up
        serial, errors1 = asyncio.run(_http_load(url, prompt, 1, duration_s))
        loaded, errors64 = asyncio.run(_http_load(url, prompt, 64, duration_s))
        return {
            "direct_grpc_p50_ms": 1e3 * statistics.median(direct),
            "router_p50_ms": 1e3 * statistics.median(serial),
            "router_p99_ms": 1e3 * percentile(serial, 99),
            "added_latency_p50_ms": 1e3 * (statistics.median(serial) -
                                           statistics.median(direct)),
            "max_rate_req_per_s": len(loaded) / duration_s,
            "loaded_p50_ms": 1e3 * statistics.median(loaded),
            "loaded_p99_ms": 1e3 * percentile(loaded, 99),
            "concurrency": 64, "errors": errors1 + errors64, "tokens_per_request": 16,
            "prompt_tokens": len(prompt),
        }
    finally:
        router.terminate()
        mocks.terminate()
        router.wait(timeout=10)
        mocks.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default=None,
                        help="Redis URL (default: a private redis-server, else fakeredis)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/router.json"))
    args = parser.parse_args()
    decision = bench_decision(num_workers=8, num_blocks=1_000_000, prompt_tokens=4096,
                              repeats=500)
    local = None
    url = args.redis
    if url is None:
        local = LocalRedis()
        local.wait()
        url = local.url
    try:
        overhead = bench_overhead(url, args.duration)
    finally:
        if local is not None:
            local.stop()
    table = print_table(["measure", "value"], [
        ["routing decision p50 (4k prompt, 8 workers, 1M blocks)", f"{decision['p50_ms']:.3f} ms"],
        ["routing decision p99", f"{decision['p99_ms']:.3f} ms"],
        ["direct gRPC prefill+decode p50 (mock workers)", f"{overhead['direct_grpc_p50_ms']:.2f} ms"],
        ["through router p50 / p99 (1 client)",
         f"{overhead['router_p50_ms']:.2f} / {overhead['router_p99_ms']:.2f} ms"],
        ["router added latency p50", f"{overhead['added_latency_p50_ms']:.2f} ms"],
        ["max rate, 64 clients", f"{overhead['max_rate_req_per_s']:.0f} req/s"],
        ["latency at max rate p50 / p99",
         f"{overhead['loaded_p50_ms']:.1f} / {overhead['loaded_p99_ms']:.1f} ms"],
    ])
    save_json(args.out, {"decision": decision, "overhead": overhead, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
