"""Routing decision time, in process: ``Dispatcher.plan`` for a 4k-token prompt (hashing its
256 blocks included) with 8 prefill workers and 1M blocks in the prefix index. Uses this
checkout's router (router_bench runs it with ``--decision``).

    python -m benchmarks.router_decision
"""

from __future__ import annotations

import random
import statistics
import time

from benchmarks.serving_metrics import percentile


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


if __name__ == "__main__":
    r = bench_decision(num_workers=8, num_blocks=1_000_000, prompt_tokens=4096, repeats=500)
    print(f"routing decision p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")
