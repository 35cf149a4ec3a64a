"""`pdserve bench`: drive an OpenAI-compatible endpoint and save serving metrics.

    pdserve bench --workload shared-prefix --rate 2 --duration 60 --out results/kv.json
    pdserve bench --compare results/a.json results/b.json --plot-dir results/

Each run draws its prompts from a fresh seed (printed, and saved in the JSON) so that a second
run does not hit the prefix cache the first one filled; ``--seed N`` repeats a run's prompts.
Plots need matplotlib (the ``bench`` extra); without it they are skipped, the JSON is not.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

WORKLOADS = ("random", "shared-prefix", "long-short", "trace")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1",
                        help="OpenAI API base URL (default: the local cluster of `pdserve up`)")
    parser.add_argument("--model", default=None, help="model name (default: the first served)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--workload", choices=WORKLOADS, default="random")
    parser.add_argument("--trace", type=Path, default=None,
                        help="JSONL trace for --workload trace (timestamp, input_length, "
                             "output_length, optional prefix_group)")
    parser.add_argument("--num-requests", type=int, default=64,
                        help="requests to generate (sessions x turns for shared-prefix)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open-loop Poisson arrivals (requests/s); default: closed loop")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="closed loop: requests in flight")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop issuing new requests after this many seconds")
    parser.add_argument("--input-len", type=int, default=256, help="random: mean prompt tokens")
    parser.add_argument("--output-len", type=int, default=64, help="random: mean output tokens")
    parser.add_argument("--groups", type=int, default=4, help="shared-prefix: system prompts")
    parser.add_argument("--turns", type=int, default=3, help="shared-prefix: turns per user")
    parser.add_argument("--system-len", type=int, default=512,
                        help="shared-prefix: system prompt tokens")
    parser.add_argument("--long-fraction", type=float, default=0.3,
                        help="long-short: share of long-prompt requests")
    parser.add_argument("--vocab-size", type=int, default=32000,
                        help="prompt token ids are drawn below this")
    parser.add_argument("--slo-ttft", type=float, default=2.0, help="goodput SLO: TTFT seconds")
    parser.add_argument("--slo-tpot", type=float, default=0.1,
                        help="goodput SLO: seconds per output token")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the prompts and arrivals (default: a fresh one per run, "
                             "printed; pass it to repeat a run)")
    parser.add_argument("--label", default=None, help="name of this run in tables and plots")
    parser.add_argument("--system", default=None,
                        help="system under test (groups runs at several rates in plots)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="write PNG plots here (default: '<name>-plots/' beside the JSON; "
                             "with --compare: 'compare-plots/' beside the first JSON given)")
    parser.add_argument("--compare", type=Path, nargs="+", default=None,
                        help="compare saved runs instead of running: print their table and "
                             "write the plots to --plot-dir (default: 'compare-plots/' in the "
                             "folder of the first JSON given)")


def run_seed(seed: int | None) -> int:
    """``--seed``, else a fresh one: the same prompts twice would measure the prefix cache
    that the first run filled, not the workload."""
    return seed if seed is not None else secrets.randbelow(2**31)


def compare_plot_dir(paths: list[Path]) -> Path:
    return paths[0].parent / "compare-plots"


def build_workload(args: argparse.Namespace, seed: int):
    from benchmarks import workloads as w

    if args.workload == "random":
        return w.random_lengths(args.num_requests, args.input_len, args.output_len,
                                vocab=args.vocab_size, seed=seed)
    if args.workload == "shared-prefix":
        users = max(1, args.num_requests // (args.groups * args.turns))
        return w.shared_prefix(args.groups, users, args.turns, args.system_len,
                               vocab=args.vocab_size, seed=seed)
    if args.workload == "long-short":
        return w.long_short_mix(args.num_requests, args.long_fraction, vocab=args.vocab_size,
                                seed=seed)
    if args.trace is None:
        raise ValueError("--workload trace needs --trace FILE")
    return w.trace(args.trace, vocab=args.vocab_size, seed=seed)


def save_and_plot(result: dict, out: Path, plot_dir: Path | None) -> list[Path]:
    """Print the run's table, save its JSON, then the plots (skipped, saying so, without
    matplotlib: the JSON never depends on them)."""
    from benchmarks import compare
    from benchmarks.report import save_json

    compare.table([result])
    save_json(out, result)
    written = compare.plot([result], plot_dir or out.with_name(f"{out.stem}-plots"))
    for path in written:
        print(f"wrote {path}")
    return written


def plan(args: argparse.Namespace):
    """The run's seed (printed, so it can be repeated) and its workload."""
    seed = run_seed(args.seed)
    print(f"[bench] seed {seed} (repeat these prompts with --seed {seed})", flush=True)
    return seed, build_workload(args, seed)


def make_result(args: argparse.Namespace, workload, model: str, seed: int, records,
                elapsed_s: float) -> dict:
    """What a run saves: its parameters, metrics, samples for the CDFs and the timeline."""
    import time

    from benchmarks.report import machine_info
    from benchmarks.serving_metrics import aggregate, timeline

    metrics = aggregate(records, elapsed_s, args.slo_ttft, args.slo_tpot)
    return {
        "label": args.label or f"{workload.name}-{args.rate or 'c' + str(args.concurrency)}",
        "system": args.system, "workload": workload.name,
        "workload_params": workload.params, "rate": args.rate,
        "concurrency": None if args.rate else args.concurrency, "model": model, "url": args.url,
        "seed": seed, "metrics": metrics, "machine": machine_info(), "finished_at": time.time(),
        "samples": {
            "ttft": [r.ttft for r in records if r.ok],
            "tpot": [r.tpot for r in records if r.ok and r.tpot is not None],
            "e2e": [r.e2e for r in records if r.ok],
        },
        "timeline": timeline(records),
        "errors": [r.error for r in records if r.error][:20],
    }


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import httpx
    from tqdm import tqdm

    from benchmarks import compare
    from benchmarks.load_driver import DriveSpec, drive

    if args.compare:
        runs = compare.load(args.compare)
        compare.table(runs)
        for path in compare.plot(runs, args.plot_dir or compare_plot_dir(args.compare)):
            print(f"wrote {path}")
        return 0
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or httpx.get(f"{args.url}/models", headers=headers,
                                    timeout=30).json()["data"][0]["id"]
    seed, workload = plan(args)
    spec = DriveSpec(url=args.url, model=model, rate=args.rate, concurrency=args.concurrency,
                     duration_s=args.duration, num_requests=args.num_requests, seed=seed,
                     api_key=args.api_key)
    total = min(args.num_requests, workload.num_requests)
    bar = tqdm(total=total, desc=f"{workload.name} "
               f"{'rate ' + str(args.rate) if args.rate else 'c=' + str(args.concurrency)}",
               unit="req")
    records, elapsed = asyncio.run(drive(workload, spec, on_done=lambda r: bar.update(1)))
    bar.close()
    result = make_result(args, workload, model, seed, records, elapsed)
    out = args.out or Path("benchmarks/results") / f"bench-{result['label']}.json"
    save_and_plot(result, out, args.plot_dir)
    metrics = result["metrics"]
    print(json.dumps({k: metrics[k] for k in ("completed", "errors", "goodput")}))
    return 0 if metrics["errors"] == 0 else 1
