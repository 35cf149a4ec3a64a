"""The serving experiments: routing policies, disaggregated vs colocated, pool scaling.

Each configuration starts a fresh local cluster (``deploy.local_cluster``) on the demo model,
drives it with ``pdserve bench``'s driver, saves the run's JSON, and stops the cluster. Every
worker gets one torch thread so that several workers share the cores evenly.

    python -m benchmarks.experiments routing|routers|disagg|scaling [--out-dir DIR]

``routers`` is the routing experiment's kv_aware run with 1 and with 2 router processes on one
port (issue 16: each process follows the KV events itself, so the cached-token share should stay
within the noise of one process), each twice, alternating, since one run's share moves with the
order the arrivals happen to take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from benchmarks import compare, workloads
from benchmarks.load_driver import DriveSpec, drive
from benchmarks.report import machine_info, save_json
from benchmarks.serving_metrics import aggregate
from deploy.local_cluster import ClusterSpec, LocalCluster
from deploy.redis_server import free_port


def run_config(label: str, system: str, prefill: int, decode: int, workload, rate: float,
               out_dir: Path, slo: tuple[float, float], policy: str = "kv_aware",
               worker_args: tuple[str, ...] = (),
               router_args: tuple[str, ...] = (), duration_s: float = 120.0,
               router_processes: int = 1) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers
    port = free_port()
    spec = ClusterSpec(model="demo", prefill=prefill, decode=decode, router_port=port,
                       policy=policy, log_dir=out_dir / "logs" / label,
                       worker_args=tuple(worker_args), router_args=tuple(router_args),
                       router_processes=router_processes)
    cluster = LocalCluster(spec, log=lambda *a: None)
    try:
        cluster.start_all(timeout_s=300)
        url = f"http://127.0.0.1:{port}/v1"
        import httpx

        model = httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"]
        spec_drive = DriveSpec(url=url, model=model, rate=rate, duration_s=duration_s,
                               num_requests=workload.num_requests, seed=1)
        records, elapsed = asyncio.run(drive(workload, spec_drive))
        metrics = aggregate(records, elapsed, *slo)
        view = httpx.get(f"http://127.0.0.1:{port}/v1/cluster", timeout=10).json()
    finally:
        cluster.stop()
    result = {
        "label": label, "system": system, "workload": workload.name,
        "workload_params": workload.params, "rate": rate, "policy": policy,
        "prefill_workers": prefill, "decode_workers": decode,
        "router_processes": router_processes, "metrics": metrics,
        "samples": {"ttft": [r.ttft for r in records if r.ok],
                    "tpot": [r.tpot for r in records if r.ok and r.tpot is not None],
                    "e2e": [r.e2e for r in records if r.ok]},
        "errors": [r.error for r in records if r.error][:10],
        "router_view": {"prefix_hit_ratio": view["prefix_hit_ratio"], "index": view["index"]},
        "machine": machine_info(), "finished_at": time.time(),
    }
    save_json(out_dir / f"{label}.json", result)
    return result


def _routing_workload():
    return workloads.shared_prefix(num_groups=4, users_per_group=4, turns=3, system_tokens=512,
                                   user_tokens=64, output_tokens=16, vocab=32000, seed=0)


def routing(out_dir: Path) -> list[dict]:
    wl = _routing_workload()
    return [run_config(f"routing-{p}", p, 3, 1, wl, rate=0.6, out_dir=out_dir,
                       slo=(5.0, 0.5), policy=p)
            for p in ("kv_aware", "round_robin", "least_loaded", "random")]


def routers(out_dir: Path) -> list[dict]:
    wl = _routing_workload()
    return [run_config(f"routers-{n}proc-run{run}", f"kv_aware, {n} router process(es)", 3, 1,
                       wl, rate=0.6, out_dir=out_dir, slo=(5.0, 0.5), router_processes=n)
            for run in (1, 2) for n in (1, 2)]


def disagg(out_dir: Path) -> list[dict]:
    wl = workloads.long_short_mix(48, long_fraction=0.3, long_input=1536, long_output=8,
                                  short_input=64, short_output=96, vocab=32000, seed=0)
    slo = (6.0, 0.25)
    runs = [run_config("disagg-1p1d", "1P+1D disaggregated", 1, 1, wl, rate=0.35,
                       out_dir=out_dir, slo=slo)]
    # Colocated: two workers that each prefill and decode; with no prefill pool the router
    # prefills every request on the decode worker it picks.
    runs.append(run_config("disagg-colocated-2", "2 colocated", 0, 2, wl, rate=0.35,
                           out_dir=out_dir, slo=slo, worker_args=("--role", "both")))
    return runs


def scaling(out_dir: Path) -> list[dict]:
    wl = workloads.random_lengths(40, input_mean=512, output_mean=48, spread=0.5,
                                  vocab=32000, seed=0)
    runs = []
    for decode in (1, 2):
        for prefill in (1, 2, 3):
            runs.append(run_config(f"scaling-{prefill}p{decode}d", f"{prefill}P+{decode}D",
                                   prefill, decode, wl, rate=1.0, out_dir=out_dir,
                                   slo=(5.0, 0.5)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["routing", "routers", "disagg", "scaling"])
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/experiments"))
    args = parser.parse_args()
    runs = {"routing": routing, "routers": routers, "disagg": disagg,
            "scaling": scaling}[args.experiment](
        args.out_dir)
    text = compare.table(runs)
    (args.out_dir / f"{args.experiment}.txt").write_text(text + "\n")
    for path in compare.plot(runs, args.out_dir / args.experiment):
        print(f"wrote {path}")
    print(json.dumps([{r["label"]: r["metrics"]["goodput"]} for r in runs]))


if __name__ == "__main__":
    main()
