"""What the serving path costs on one GPU host: decode-heavy streams through the router against
the offline engine on the same arrivals (issue 16's "<= 10%" sweep).

For each concurrency C (default 32, 64, 128), C requests of short prompts (32 tokens) and
512-token answers (``ignore_eos``) arrive at once:
- offline: ``LLMEngine.step()`` in a child process on the GPU (gone before the cluster starts);
  each request's TPOT is (last token time - first token time) / (tokens - 1), as its deltas
  come out of ``step()``, and the engine's decode step at that batch is the decode time over
  its forward passes once every request has its first token;
- served: Redis, the router and one colocated worker (``decode --role both``, the same engine
  settings) on the same GPU, the same prompts streamed to ``/v1/completions`` by a minimal
  asyncio HTTP client (one connection per stream, chunk arrival times read off the socket);
  TPOT the same way from the first and the last chunk; the router's CPU (user+sys of its
  process tree, /proc) over the wave, per streamed token.

Reported per C: TPOT p50 served vs offline (ratio; target <= 1.10), the engine's decode step,
router CPU µs per token and the cores it used. JSON under ``--out`` (default
``$OUT/serving_overhead_gpu.json`` when ``$OUT`` is set), a table on stdout. About 2-3 minutes
on an H200 (two model loads, one warm-up wave each, three waves of 512 steps each).

    python -m benchmarks.serving_overhead_gpu [--concurrency 32 64 128] [--out PATH]
    python -m benchmarks.serving_overhead_gpu --dry-run   # CPU, demo model, seconds

Needs only torch and the router's wheels (no redis-server: the cluster embeds fakeredis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import time
from pathlib import Path

DRY = dict(model="demo", device="cpu", dtype="float32", concurrency=[2, 4], prompt_tokens=16,
           output_tokens=8, kv_gib=1.0)
TARGET_RATIO = 1.10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:llama-3.1-8b", help="model of both systems")
    p.add_argument("--device", default="cuda", help="'cuda' or 'cpu'")
    p.add_argument("--dtype", default="bfloat16", help="dtype of both systems")
    p.add_argument("--concurrency", type=int, nargs="+", default=[32, 64, 128],
                   help="streams arriving at once, one wave each")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (token ids)")
    p.add_argument("--output-tokens", type=int, default=512, help="tokens per answer")
    p.add_argument("--kv-gib", type=float, default=16.0, help="KV cache of both systems, GiB")
    p.add_argument("--router-workers", type=int, default=1, help="router processes")
    p.add_argument("--gpu", type=int, default=0, help="GPU of both systems (CUDA only)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to come up")
    p.add_argument("--dry-run", action="store_true",
                   help="rehearse on CPU: demo model, 2 and 4 streams of 8 tokens")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: $OUT/serving_overhead_gpu.json, else "
                        "benchmarks/results/serving_overhead_gpu.json)")
    args = p.parse_args(argv)
    if args.dry_run:
        for k, v in DRY.items():
            setattr(args, k, v)
    if args.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("benchmarks/results")
        args.out = base / ("serving_overhead_dry.json" if args.dry_run
                           else "serving_overhead_gpu.json")
    args.max_num_seqs = max(args.concurrency)
    return args


def draw_prompts(concurrency: list[int], length: int, vocab: int, seed: int = 0
                 ) -> dict[int, list[list[int]]]:
    """One prompt set per wave (distinct, so no wave finds another's prefix cached)."""
    rng = random.Random(seed)
    return {c: [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(c)]
            for c in concurrency}


def tpot_s(first_s: float, last_s: float, tokens: int) -> float | None:
    return (last_s - first_s) / (tokens - 1) if tokens > 1 else None


def p50(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- offline engine ----------------------------------------------------------------------------
def _engine_waves(args_dict: dict, prompts: dict[int, list[list[int]]], warm, out) -> None:
    try:
        out.put(engine_waves(argparse.Namespace(**args_dict), prompts, warm))
    except Exception as e:  # noqa: BLE001 - the parent re-raises it
        out.put(RuntimeError(f"{type(e).__name__}: {e}"))


def engine_waves(args, prompts: dict[int, list[list[int]]], warm: list[list[int]]) -> dict:
    import torch

    from engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    max_num_seqs=args.max_num_seqs))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def wave(batch: list[list[int]], max_tokens: int) -> dict:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        tokens: dict[str, int] = {}
        sync()
        for p in batch:
            engine.add_request(p, params)
        decode_start = passes = None
        while engine.has_unfinished():
            deltas = engine.step()
            now = time.perf_counter()
            for d in deltas:
                if d.new_token_ids:
                    first.setdefault(d.request_id, now)
                    last[d.request_id] = now
                    tokens[d.request_id] = tokens.get(d.request_id, 0) + len(d.new_token_ids)
            if decode_start is None and len(first) >= len(batch):
                sync()
                decode_start, passes = time.perf_counter(), engine.runner.num_forward_passes
        sync()
        steps = engine.runner.num_forward_passes - (passes or 0)
        return {"streams": len(batch),
                "tpot_p50_s": p50(tpot_s(first[r], last[r], tokens[r]) for r in first),
                "decode_step_s": (time.perf_counter() - decode_start) / max(steps, 1),
                "decode_steps": steps, "tokens": sum(tokens.values())}

    wave(warm, 8)  # warm-up: the largest batch compiles its shapes
    return {c: wave(batch, args.output_tokens) for c, batch in prompts.items()}


def run_engine(args, prompts, warm) -> dict:
    """In a child process, so its GPU memory is free again before the cluster starts."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    env_gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    if args.device.startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    try:
        child = ctx.Process(target=_engine_waves, args=(vars(args), prompts, warm, out))
        child.start()
    finally:
        if env_gpu is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_gpu
    import queue

    deadline = time.monotonic() + args.ready_timeout + 600
    while True:  # a child that dies without answering (CUDA OOM, a kill) fails the run now
        try:
            result = out.get(timeout=5)
            break
        except queue.Empty:
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the offline engine exited ({child.exitcode}) without "
                                   f"results") from None
    child.join(timeout=60)
    if isinstance(result, Exception):
        raise result
    return result


# -- through the router ------------------------------------------------------------------------
async def stream_one(port: int, model: str, prompt: list[int], max_tokens: int) -> dict:
    """One streamed completion: arrival times of the first and last chunk, tokens (usage)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                 b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    first = last = None
    payload = []
    while True:  # chunked transfer encoding: one chunk per SSE write of the router
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            break
        chunk = (await reader.readexactly(size + 2))[:-2]
        now = time.perf_counter()
        if b'"text"' in chunk:
            first = first or now
            last = now
        payload.append(chunk)
    writer.close()
    usage = None
    for line in b"".join(payload).split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            usage = json.loads(line[6:]).get("usage") or usage
    tokens = usage["completion_tokens"] if usage else 0
    return {"status": status, "ttft_s": (first - started) if first else None,
            "tpot_s": tpot_s(first, last, tokens) if first else None, "tokens": tokens}


def tree_cpu_s(pid: int) -> float:
    """user+sys seconds of ``pid`` and its descendants (/proc; children alive now)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    return sum(times.get(p, 0.0) for p in tree)


async def _wave(port: int, model: str, batch: list[list[int]], max_tokens: int) -> list[dict]:
    return await asyncio.gather(*(stream_one(port, model, p, max_tokens) for p in batch))


def run_served(args, prompts, warm) -> dict:
    from deploy.local_cluster import ClusterSpec, LocalCluster
    from deploy.redis_server import free_port

    # One colocated worker moves no KV: no transfer backend (NIXL need not be installed).
    worker_args = ("--device", args.device, "--dtype", args.dtype, "--role", "both",
                   "--kv-transfer", "none",
                   "--kv-cache-gib", str(args.kv_gib), "--max-num-seqs", str(args.max_num_seqs))
    port = free_port()
    spec = ClusterSpec(model=args.model, prefill=0, decode=1, router_port=port,
                       log_dir=args.out.parent / "serving_overhead_logs", worker_args=worker_args,
                       router_args=("--log-level", "warning"),
                       router_processes=args.router_workers,
                       gpus=(args.gpu,) if args.device.startswith("cuda") else ())
    cluster = LocalCluster(spec, log=lambda *a: None)
    results = {}
    try:
        cluster.start_all(args.ready_timeout)
        router_pid = next(c.process.pid for c in cluster.children if c.role == "router")
        worker_pid = next(c.process.pid for c in cluster.children if c.role == "decode")
        model = _served_model(port)
        asyncio.run(_wave(port, model, warm, 8))  # warm-up, as the engine's
        for c, batch in prompts.items():
            cpu0, wcpu0, t0 = tree_cpu_s(router_pid), tree_cpu_s(worker_pid), time.perf_counter()
            streams = asyncio.run(_wave(port, model, batch, args.output_tokens))
            wall = time.perf_counter() - t0
            router_s = tree_cpu_s(router_pid) - cpu0
            worker_s = tree_cpu_s(worker_pid) - wcpu0
            tokens = sum(s["tokens"] for s in streams)
            results[c] = {"streams": c, "ok": sum(s["status"] == 200 and s["tokens"] ==
                                                  args.output_tokens for s in streams),
                          "tpot_p50_s": p50(s["tpot_s"] for s in streams),
                          "ttft_p50_s": p50(s["ttft_s"] for s in streams),
                          "tokens": tokens, "wall_s": wall, "router_cpu_s": router_s,
                          "router_cpu_us_per_token": 1e6 * router_s / max(tokens, 1),
                          "router_cores": router_s / wall,
                          "worker_cpu_us_per_token": 1e6 * worker_s / max(tokens, 1)}
    finally:
        cluster.stop()
    return results


def _served_model(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
        return json.loads(r.read())["data"][0]["id"]


# -- report ------------------------------------------------------------------------------------
def summary_rows(engine: dict, served: dict) -> list[dict]:
    rows = []
    for c in sorted(served):
        e, s = engine[c], served[c]
        ratio = (s["tpot_p50_s"] / e["tpot_p50_s"]
                 if s["tpot_p50_s"] and e["tpot_p50_s"] else None)
        rows.append({"streams": c, "engine_tpot_p50_ms": _ms(e["tpot_p50_s"]),
                     "engine_decode_step_ms": _ms(e["decode_step_s"]),
                     "served_tpot_p50_ms": _ms(s["tpot_p50_s"]),
                     "served_ttft_p50_ms": _ms(s["ttft_p50_s"]), "tpot_ratio": ratio,
                     "tpot_vs_step": (s["tpot_p50_s"] / e["decode_step_s"]
                                      if s["tpot_p50_s"] and e["decode_step_s"] else None),
                     "within_target": ratio is not None and ratio <= TARGET_RATIO,
                     "router_cpu_us_per_token": s["router_cpu_us_per_token"],
                     "router_cores": s["router_cores"],
                     "worker_cpu_us_per_token": s["worker_cpu_us_per_token"],
                     "streams_ok": s["ok"]})
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


HEADERS = ["streams", "engine TPOT p50 ms", "decode step ms", "served TPOT p50 ms",
           "served / engine", "router CPU us/token", "router cores", "ok"]


def table_rows(rows: list[dict]) -> list[list]:
    return [[r["streams"], r["engine_tpot_p50_ms"], r["engine_decode_step_ms"],
             r["served_tpot_p50_ms"], r["tpot_ratio"], r["router_cpu_us_per_token"],
             r["router_cores"], f"{r['streams_ok']}/{r['streams']}"] for r in rows]


def main(argv=None) -> dict:
    from benchmarks.report import machine_info, print_table, save_json

    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    vocab = 32000
    if args.model.startswith("random:"):
        from engine.model.named_shapes import named_model

        vocab = min(vocab, named_model(args.model.split(":", 1)[1]).vocab_size)
    elif args.model == "demo":
        vocab = 10000
    prompts = draw_prompts(args.concurrency, args.prompt_tokens, vocab)
    # Warm-up prompts of their own: the measured waves find nothing of them cached.
    warm = draw_prompts([args.max_num_seqs], args.prompt_tokens, vocab, seed=1)[args.max_num_seqs]
    started = time.perf_counter()
    engine = run_engine(args, prompts, warm)
    served = run_served(args, prompts, warm)
    rows = summary_rows(engine, served)
    result = {"benchmark": "serving_overhead_gpu", "machine": machine_info(),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "target_ratio": TARGET_RATIO, "rows": rows, "engine": engine, "served": served,
              "wall_s": time.perf_counter() - started}
    save_json(args.out, result)
    print_table(HEADERS, table_rows(rows))
    return result


if __name__ == "__main__":
    main()
