"""`pdserve up`: the whole cluster on this machine, in one command."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from common import defaults
from router.policies import POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo",
                        help="'demo', 'random:<shape>', a HF directory or a .gguf file")
    parser.add_argument("--prefill", type=int, default=1, help="prefill workers")
    parser.add_argument("--decode", type=int, default=1, help="decode workers")
    parser.add_argument("--decode-tp", type=int, default=1, help="tensor parallel size of each "
                        "decode worker")
    parser.add_argument("--decode-ep", type=int, default=1,
                        help="MoE models: expert groups across each decode worker's "
                             "--decode-tp ranks (divides --decode-tp; the KV layout, and so "
                             "prefill workers, do not depend on it)")
    parser.add_argument("--host", default="127.0.0.1", help="router interface")
    parser.add_argument("--port", type=int, default=8000, help="router HTTP port")
    parser.add_argument("--redis", default=None,
                        help="use this Redis (default: a private redis-server if installed, "
                             "else an embedded one)")
    parser.add_argument("--redis-host", default="127.0.0.1",
                        help="bind the private Redis here and hand out this address: an "
                             "address of this host that others reach, so workers on other "
                             "hosts can join (pdserve prefill|decode --redis URL); Redis has no "
                             "password here, so only on a trusted network")
    parser.add_argument("--redis-prefix", default=defaults.REDIS_KEY_PREFIX,
                        help="key prefix of this cluster")
    parser.add_argument("--policy", default="kv_aware",
                        choices=POLICIES,
                        help="router prefill placement policy")
    parser.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache per worker rank (default: the engine's)")
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                        help="KV cache element type of every worker (fp8: e4m3, half the "
                             "bytes to store and to move between prefill and decode)")
    parser.add_argument("--quantization", choices=["none", "fp8"], default="none",
                        help="fp8: every worker quantizes a bf16/fp32 model's weights to FP8")
    parser.add_argument("--worker-arg", action="append", default=[],
                        help="extra flag passed to every worker (repeat), e.g. "
                             "--worker-arg=--max-num-seqs=64")
    parser.add_argument("--prefill-arg", action="append", default=[],
                        help="extra flag for prefill workers only (repeat), e.g. "
                             "--prefill-arg=--kv-cache-gib=8")
    parser.add_argument("--decode-arg", action="append", default=[],
                        help="extra flag for decode workers only (repeat)")
    parser.add_argument("--router-workers", type=int, default=1,
                        help="router processes on --port (the router's --workers: SO_REUSEPORT, "
                             "each following the cluster itself; /metrics answers for all)")
    parser.add_argument("--chat-template", default=None,
                        help="the router's --chat-template: a Jinja file replacing the model's")
    parser.add_argument("--tool-call-parser", default=None,
                        help="the router's --tool-call-parser (hermes, llama3_json, mistral, "
                             "none; default auto: from the chat template)")
    parser.add_argument("--reasoning-parser", default=None,
                        help="the router's --reasoning-parser (qwen3, deepseek_r1, none; "
                             "default auto)")
    parser.add_argument("--router-arg", action="append", default=[],
                        help="extra flag passed to the router (repeat)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="per-component logs go to a timestamped folder here "
                             "(default: logs/ in the cache dir, ~/.cache/pdserve/logs)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="model cache (default: $PDSERVE_CACHE_DIR or ~/.cache/pdserve)")
    parser.add_argument("--gpus", default=None,
                        help="GPU ids to hand out, e.g. 0,1,2,3: one per prefill worker, "
                             "--decode-tp per decode worker (default: every worker sees all)")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds to wait for the workers to load")
    parser.add_argument("--cluster-secret-file", type=Path, default=None,
                        help="the cluster secret every component authenticates with (default: "
                             "a new one per run, in the run's log folder, mode 600); workers "
                             "started elsewhere join with the same file")
    parser.add_argument("--no-smoke", action="store_true",
                        help="skip the test question sent once the cluster is up")


def state_file(cache_dir: Path | None) -> Path:
    from common.paths import default_cache_dir

    return (cache_dir or default_cache_dir()) / "run" / "cluster.json"


def log_root(args: argparse.Namespace) -> Path:
    """Where the timestamped log folders go: --log-dir, else the cache dir (never the working
    directory, which is often a git checkout)."""
    from common.paths import default_cache_dir

    return args.log_dir or (args.cache_dir or default_cache_dir()) / "logs"


def _parser_flags(args: argparse.Namespace) -> tuple[str, ...]:
    flags = []
    for name in ("chat_template", "tool_call_parser", "reasoning_parser"):
        value = getattr(args, name)
        if value is not None:  # a template path is made absolute: the router's cwd may differ
            value = Path(value).resolve() if name == "chat_template" else value
            flags += ["--" + name.replace("_", "-"), str(value)]
    return tuple(flags)


def run(args: argparse.Namespace) -> int:
    from deploy.local_cluster import ClusterSpec, ClusterState, LocalCluster

    say = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.model == "demo":
        from common.paths import default_cache_dir
        from engine.model.loaders.demo_model import prepare_demo_model

        prepare_demo_model(args.cache_dir or default_cache_dir())
    worker_args = list(args.worker_arg)
    if args.kv_cache_gib is not None:
        worker_args += ["--kv-cache-gib", str(args.kv_cache_gib)]
    if args.kv_cache_dtype != "auto":
        worker_args += ["--kv-cache-dtype", args.kv_cache_dtype]
    if args.quantization != "none":
        worker_args += ["--quantization", args.quantization]
    spec = ClusterSpec(model=args.model, prefill=args.prefill, decode=args.decode,
                       decode_tp=args.decode_tp, decode_ep=args.decode_ep,
                       router_host=args.host, router_port=args.port,
                       redis_url=args.redis, redis_host=args.redis_host,
                       redis_prefix=args.redis_prefix, policy=args.policy,
                       log_dir=log_root(args), worker_args=tuple(worker_args),
                       prefill_args=tuple(args.prefill_arg), decode_args=tuple(args.decode_arg),
                       router_args=tuple(args.router_arg) + _parser_flags(args),
                       cache_dir=args.cache_dir,
                       router_processes=args.router_workers,
                       secret_file=args.cluster_secret_file,
                       gpus=tuple(int(g) for g in args.gpus.split(",")) if args.gpus else ())
    cluster = LocalCluster(spec, log=say)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    state_path = state_file(args.cache_dir)
    try:
        say(f"[pdserve] logs: {cluster.log_dir}/")
        cluster.start_redis()
        say(f"[pdserve] redis: {cluster.redis_url} ({cluster.redis_kind})")
        say(f"[pdserve] cluster secret: {cluster.secret_file} (every internal gRPC call and "
            f"Redis connection authenticates with it)")
        cluster.start_router()
        for _ in range(args.prefill):
            cluster.add_worker("prefill")
        for _ in range(args.decode):
            cluster.add_worker("decode")
        cluster.publish_desired(args.prefill, args.decode)
        ClusterState(cluster.redis_url, spec.redis_prefix, cluster.router_url,
                     __import__("os").getpid(), str(cluster.log_dir), args.model,
                     secret_file=str(cluster.secret_file)).save(state_path)
        say(f"[pdserve] starting {args.prefill} prefill + {args.decode} decode worker(s) "
            f"on {args.model}")
        cluster.wait_ready(args.prefill, args.decode, args.ready_timeout,
                           on_progress=lambda p, d: say(
                               f"[pdserve] workers ready: prefill {p}/{args.prefill}, "
                               f"decode {d}/{args.decode}"))
        model_name = _served_name(cluster.router_url)
        say(f"\n[pdserve] cluster ready: {cluster.router_url}/v1  (model: {model_name})")
        say(f"[pdserve] try: curl {cluster.router_url}/v1/chat/completions -H "
            f"'Content-Type: application/json' -d '{{\"model\": \"{model_name}\", "
            f"\"temperature\": 0, \"messages\": "
            f"[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'")
        say("[pdserve] status: pdserve status | resize: pdserve scale prefill=N decode=M | "
            "stop: Ctrl-C\n")
        if not args.no_smoke:
            _smoke(cluster.router_url, model_name, say)
        while not stopping:
            cluster.reap()
            desired = cluster.desired_sizes()
            for role in ("prefill", "decode"):
                if role in desired and desired[role] != len(cluster.workers(role)):
                    cluster.scale(role, desired[role])
            time.sleep(0.5)
    except (TimeoutError, RuntimeError) as e:
        say(f"[pdserve] error: {e}")
        return 1
    finally:
        say("[pdserve] shutting down (draining workers)...")
        cluster.stop()
        if state_path.exists():
            state_path.unlink()
        say(f"[pdserve] stopped (logs: {cluster.log_dir}/)")
    return 0


def _served_name(router_url: str) -> str:
    import httpx

    return httpx.get(f"{router_url}/v1/models", timeout=10).json()["data"][0]["id"]


def _smoke(router_url: str, model: str, say) -> None:
    import httpx

    question = "What is the capital of France?"
    try:
        r = httpx.post(f"{router_url}/v1/chat/completions", timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": 64})
        if r.status_code != 200:
            say(f"[pdserve] smoke test failed: HTTP {r.status_code}: {r.text[:300]}")
            return
        answer = r.json()["choices"][0]["message"]["content"]
        say(f"[pdserve] smoke test: {question!r} -> {answer!r}")
    except (httpx.HTTPError, KeyError, json.JSONDecodeError) as e:
        say(f"[pdserve] smoke test failed: {e}")

