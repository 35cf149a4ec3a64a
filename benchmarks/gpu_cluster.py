"""Serving runs of one model on a multi-GPU host, each on a fresh local cluster.

hetero  two prefill workers (TP=1, a GPU each) and one decode worker (TP=2, two GPUs):
        greedy tokens through the cluster against one TP=1 engine (in --check-dtypes), then
        the shared-prefix workload under kv_aware and under round_robin (TTFT, cached-token
        share), with the decode worker's KV pull bandwidth against raw NIXL between two of
        the same GPUs, measured in the same run.
pair    one prefill + one decode worker against two colocated engines (a GPU each) on the
        long/short mix (TPOT p99, goodput under the SLOs), and the KV pull's share of the TTFT
        of a 4k-token prompt.

    python -m benchmarks.gpu_cluster hetero --gpus 0,1,2,3
    python -m benchmarks.gpu_cluster pair --gpus 0,1

Every run saves JSON under --out-dir and prints its tables. The same runs rehearse on CPU with
a tiny shape: --model random:tiny-llama-tp --device cpu --gpus '' --quick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks import compare, workloads
from benchmarks.load_driver import DriveSpec, drive
from benchmarks.report import machine_info, print_table, save_json
from benchmarks.serving_metrics import aggregate
from benchmarks.worker_counters import pull_delta, secret_file, worker_stats
from deploy.local_cluster import ClusterSpec, LocalCluster
from deploy.redis_server import free_port


def prompt_vocab(model: str) -> int:
    """Prompt token ids are drawn below this: 32000, or a random shape's smaller vocabulary."""
    if model.startswith("random:"):
        from engine.model.named_shapes import named_model

        return min(32000, named_model(model.split(":", 1)[1]).vocab_size)
    return 32000


# -- a cluster for the length of a with-block -------------------------------------------------
@contextlib.contextmanager
def running_cluster(args, label: str, prefill: int, decode: int, decode_tp: int = 1,
                    policy: str = "kv_aware", dtype: str | None = None,
                    extra_worker_args: tuple[str, ...] = (),
                    prefill_args: tuple[str, ...] = ()):
    worker_args = ("--device", args.device, "--dtype", dtype or args.dtype,
                   *extra_worker_args)
    spec = ClusterSpec(model=args.model, prefill=prefill, decode=decode, decode_tp=decode_tp,
                       router_port=free_port(), policy=policy,
                       log_dir=args.out_dir / "logs" / label, worker_args=worker_args,
                       prefill_args=prefill_args, router_args=tuple(args.router_arg),
                       gpus=args.gpu_ids, secret_file=secret_file())
    cluster = LocalCluster(spec, log=lambda *a: None)
    started = time.perf_counter()
    try:
        cluster.start_all(args.ready_timeout)
        url = f"{cluster.router_url}/v1"
        model = httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"]
        print(f"[{label}] cluster up in {time.perf_counter() - started:.0f}s "
              f"(redis: {cluster.redis_kind})", flush=True)
        yield cluster, url, model
    finally:
        cluster.stop()


# -- greedy tokens: through the router, and from one engine ------------------------------------
async def _greedy_one(client: httpx.AsyncClient, model: str, prompt: list[int],
                      max_tokens: int) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": 0}
    r = await client.post("/completions", json=body)
    r.raise_for_status()
    tokens = r.json()["choices"][0]["logprobs"]["tokens"]
    # Shapes without a tokenizer name each token "token_id:<id>".
    return [int(t.removeprefix("token_id:")) for t in tokens]


def greedy_through_router(url: str, model: str, prompts: list[list[int]],
                          max_tokens: int) -> list[list[int]]:
    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            return await asyncio.gather(*(_greedy_one(client, model, p, max_tokens)
                                          for p in prompts))

    return asyncio.run(main())


def _engine_tokens(model, device, dtype, prompts, max_tokens, out):
    from engine import LLM, SamplingParams

    try:
        with LLM(model=model, device=device, dtype=dtype, kv_transfer="none") as llm:
            outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens,
                                                        ignore_eos=True))
            out.put([o.token_ids for o in outs])
    except Exception as e:  # the parent raises it instead of waiting for tokens
        out.put(e)


def greedy_single_engine(args, dtype: str, prompts: list[list[int]], max_tokens: int,
                         gpu: int | None) -> list[list[int]]:
    """One TP=1 engine in a child process (so its GPU memory is gone when it returns)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        p = ctx.Process(target=_engine_tokens,
                        args=(args.model, args.device, dtype, prompts, max_tokens, out))
        p.start()
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    tokens = out.get(timeout=args.ready_timeout)
    p.join(timeout=60)
    if isinstance(tokens, Exception):
        raise RuntimeError(f"the reference engine failed: {tokens}") from tokens
    return tokens


def token_agreement(got: list[list[int]], want: list[list[int]]) -> dict:
    same_seq = sum(g == w for g, w in zip(got, want, strict=True))
    first_diff = [next((i for i, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), None)
                  for g, w in zip(got, want, strict=True)]
    matched = [len(g) if d is None else d for g, d in zip(got, first_diff, strict=True)]
    return {"prompts": len(want), "identical_sequences": same_seq,
            "tokens_before_first_difference": sum(matched),
            "tokens": sum(len(w) for w in want), "first_difference_at": first_diff}


def run_load(url: str, model: str, workload, rate: float, duration_s: float | None,
             slo: tuple[float, float]) -> tuple[dict, list]:
    spec = DriveSpec(url=url, model=model, rate=rate, duration_s=duration_s,
                     num_requests=workload.num_requests, seed=1)
    records, elapsed = asyncio.run(drive(workload, spec))
    return aggregate(records, elapsed, *slo), records


def run_record(label: str, system: str, workload, rate: float, metrics: dict, records: list,
               **extra) -> dict:
    return {"label": label, "system": system, "workload": workload.name,
            "workload_params": workload.params, "rate": rate, "metrics": metrics,
            "samples": {"ttft": [r.ttft for r in records if r.ok],
                        "tpot": [r.tpot for r in records if r.ok and r.tpot is not None],
                        "e2e": [r.e2e for r in records if r.ok]},
            "errors": [r.error for r in records if r.error][:10], **extra}


# -- raw NIXL between two GPUs of this run ----------------------------------------------------
def raw_nixl(args, owner_gpu: int | None, receiver_gpu: int | None) -> dict:
    """kv_transfer_bench in a child process, on two GPUs this run's cluster also uses."""
    out = args.out_dir / f"kv_transfer_{args.device}.json"
    env = dict(os.environ)
    if owner_gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = f"{owner_gpu},{receiver_gpu}"
    subprocess.run([sys.executable, "-m", "benchmarks.kv_transfer_bench", "--device",
                    args.device, "--repeats", str(args.kv_repeats), "--out", str(out)],
                   env=env, check=True)
    return json.loads(out.read_text())


def _raw_figure(kv: dict) -> float:
    """The link's figure: raw NIXL, large contiguous descriptors, 8B shape, best of modes."""
    rows = [r for r in kv["results"] if r["shape"].startswith("llama-3.1-8b")] or kv["results"]
    return max(r["raw_nixl_bytes_per_s"] for r in rows)


# -- the experiments ---------------------------------------------------------------------------
def hetero(args) -> dict:
    gpus = args.gpu_ids
    result: dict = {"experiment": "hetero", "model": args.model, "machine": machine_info(),
                    "gpus": gpus}
    if "kv" in args.steps:
        result["kv_transfer"] = raw_nixl(args, *(gpus[1:3] if gpus else (None, None)))
        save(args, result)
    rates = args.rate or [6.0]
    n, max_tokens = (8, 8) if args.quick else (32, 32)
    drawn = workloads.random_lengths(n, input_mean=256, output_mean=1, spread=0.8,
                                     vocab=prompt_vocab(args.model), seed=7)
    prompts = [r.prompt for session in drawn.sessions for r in session]
    if "correct" in args.steps:
        checks = []
        for dtype in args.check_dtypes:
            want = greedy_single_engine(args, dtype, prompts, max_tokens,
                                        gpus[0] if gpus else None)
            with running_cluster(args, f"hetero-correct-{dtype}", 2, 1, 2, dtype=dtype,
                                 extra_worker_args=("--max-num-seqs", "32")) as (_, url, model):
                got = greedy_through_router(url, model, prompts, max_tokens)
            checks.append({"dtype": dtype, **token_agreement(got, want)})
            print(f"[hetero] {dtype}: {checks[-1]['identical_sequences']}/{n} sequences "
                  f"identical to one TP=1 engine", flush=True)
            result["correctness"] = checks
            save(args, result)
    if "bench" in args.steps:
        # More distinct system prompts than one prefill worker's cache holds, but fewer than
        # two hold: placement by cached prefix keeps each group on one worker, round robin
        # makes both cache every group and evict.
        groups, users = (4, 2) if args.quick else (16, 4)
        system = 256 if args.quick else 2048
        runs = []
        prefill_kv = ("--kv-cache-gib", str(args.prefill_kv_gib)) if args.prefill_kv_gib else ()
        with running_cluster(args, "hetero-bench", 2, 1, 2,
                             prefill_args=prefill_kv) as (cluster, url, model):
            for i, policy in enumerate(("kv_aware", "round_robin")):
                if i:
                    cluster.restart_router(policy, args.ready_timeout)
                # A fresh draw of prompts per policy: nothing cached by the previous run helps.
                wl = workloads.shared_prefix(num_groups=groups, users_per_group=users, turns=3,
                                             system_tokens=system, user_tokens=128,
                                             output_tokens=32, vocab=prompt_vocab(args.model), seed=100 + i)
                before = worker_stats(url, "decode")
                metrics, records = run_load(url, model, wl, rates[0], None,
                                            (args.slo_ttft, args.slo_tpot))
                pulls = pull_delta(before, worker_stats(url, "decode"))
                runs.append(run_record(f"hetero-{policy}", f"2P(TP1)+1D(TP2) {policy}", wl,
                                       rates[0], metrics, records, policy=policy,
                                       kv_pulls=pulls))
                result["bench"] = runs
                save(args, result)
        compare.table(runs)  # prints it
        raw = _raw_figure(result["kv_transfer"]) if "kv_transfer" in result else None
        print_table(["run", "pulls", "MiB/pull", "ms/pull", "pull GB/s", "raw NIXL GB/s",
                     "pull / raw"],
                    [[r["label"], r["kv_pulls"]["pulls_ok"],
                      r["kv_pulls"]["mean_bytes_per_pull"] / 2**20,
                      1e3 * r["kv_pulls"]["mean_seconds_per_pull"],
                      r["kv_pulls"]["bytes_per_s"] / 1e9, (raw or 0) / 1e9,
                      r["kv_pulls"]["bytes_per_s"] / raw if raw else float("nan")]
                     for r in runs])
    return result


def pair(args) -> dict:
    result: dict = {"experiment": "pair", "model": args.model, "machine": machine_info(),
                    "gpus": args.gpu_ids}
    slo = (args.slo_ttft, args.slo_tpot)
    long_input = 768 if args.quick else 4096
    rates = args.rate or [8.0]
    # One draw per rate (both systems get the same one): a rate run after another on the same
    # cluster must not find the earlier run's prompts in the prefix cache.
    def mix(seed):
        return workloads.long_short_mix(60 if args.quick else 2000, long_fraction=0.3,
                                        long_input=long_input, long_output=16, short_input=256,
                                        short_output=64 if args.quick else 256,
                                        vocab=prompt_vocab(args.model), seed=seed)

    mixes = [mix(i) for i in range(len(rates))]
    runs = []

    def sweep(url, model, label, system):
        """Warm up, then every rate in turn on this cluster, saving after each."""
        if args.warmup > 0:  # a fresh cluster compiles kernels for new shapes at first
            run_load(url, model, mix(1000), rates[0], args.warmup, slo)
        for rate, wl in zip(rates, mixes, strict=True):
            metrics, records = run_load(url, model, wl, rate, args.duration, slo)
            runs.append(run_record(label, system, wl, rate, metrics, records))
            result["bench"] = runs
            save(args, result)

    with running_cluster(args, "pair-1p1d", 1, 1) as (_, url, model):
        if "ttft" in args.steps:
            result["ttft_4k"] = transfer_share_of_ttft(url, model, long_input, args)
            save(args, result)
        if "bench" in args.steps:
            sweep(url, model, "pair-1p1d", "1P+1D disaggregated")
    if "bench" in args.steps:
        with running_cluster(args, "pair-colocated", 0, 2,
                             extra_worker_args=("--role", "both")) as (_, url, model):
            sweep(url, model, "pair-colocated-2", "2 colocated")
        compare.table(runs)  # prints it
    return result


def transfer_share_of_ttft(url: str, model: str, prompt_len: int, args) -> dict:
    """TTFT of lone long prompts (streamed) against the decode worker's pull time for each."""
    import random

    rng = random.Random(3)
    samples = []
    # One client, made before any timing: a new httpx client builds an SSL context (~40 ms
    # on these hosts), which session 3's first runs counted into the TTFT.
    with httpx.Client(timeout=600) as client:
        for i in range(4):  # the first warms up (and opens the connection) and is not kept
            prompt = [rng.randrange(10, prompt_vocab(args.model)) for _ in range(prompt_len)]
            before = worker_stats(url, "decode")
            started = time.perf_counter()
            first = None
            with client.stream("POST", f"{url}/completions", json={
                    "model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0,
                    "ignore_eos": True, "stream": True}) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
                for line in r.iter_lines():
                    if line.startswith("data: ") and first is None and '"choices"' in line:
                        first = time.perf_counter() - started
            pulls = pull_delta(before, worker_stats(url, "decode"))
            if i:
                samples.append({"ttft_s": first, "pull_s": pulls["seconds_pulling"],
                                "pull_bytes": pulls["bytes_pulled"],
                                "share": pulls["seconds_pulling"] / first if first else None})
    print_table(["prompt tokens", "TTFT ms", "KV pull ms", "MiB", "pull share of TTFT"],
                [[prompt_len, 1e3 * s["ttft_s"], 1e3 * s["pull_s"], s["pull_bytes"] / 2**20,
                  s["share"]] for s in samples])
    return {"prompt_tokens": prompt_len, "samples": samples}


def save(args, result: dict) -> None:
    """Write what a run has so far (a run cut short by a time limit still leaves its steps)."""
    result["args"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}
    save_json(args.out_dir / f"{args.experiment}.json", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["hetero", "pair"])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--device", default="cuda", help="'cuda' or 'cpu' (rehearsal)")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the benchmark runs")
    parser.add_argument("--check-dtypes", nargs="+", default=["float32", "bfloat16"],
                        help="hetero: dtypes of the token-equality check")
    parser.add_argument("--gpus", default="0,1,2,3",
                        help="GPU ids handed out in order: prefill workers first ('' on CPU)")
    parser.add_argument("--steps", default="kv,correct,bench,ttft",
                        help="comma list of: kv (raw NIXL), correct, bench, ttft (pair only)")
    parser.add_argument("--rate", type=float, nargs="+", default=None,
                        help="requests/s (Poisson); pair runs each rate on both systems "
                             "(default 8), hetero the first (default 6)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="pair: seconds of load per system")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="pair: seconds of unrecorded load on each fresh cluster first")
    parser.add_argument("--slo-ttft", type=float, default=1.0)
    parser.add_argument("--slo-tpot", type=float, default=0.04)
    parser.add_argument("--kv-repeats", type=int, default=5)
    parser.add_argument("--prefill-kv-gib", type=float, default=3.0,
                        help="hetero bench: KV cache of each prefill worker (0: the default)")
    parser.add_argument("--router-arg", action="append", default=[],
                        help="extra router flag for every cluster, repeatable (e.g. "
                             "--router-arg=--prefill-saturation-tokens --router-arg=16384)")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="small counts for a rehearsal")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/gpu_cluster"))
    args = parser.parse_args()
    args.gpu_ids = tuple(int(g) for g in args.gpus.split(",") if g.strip())
    args.steps = set(args.steps.split(","))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    save(args, {"hetero": hetero, "pair": pair}[args.experiment](args))


if __name__ == "__main__":
    main()
