"""`pdserve router` (or `python -m router`): the OpenAI-compatible front door."""

from __future__ import annotations

import argparse
from pathlib import Path

from common import defaults
from common.cluster_secret import add_secret_arguments, secret_from_args

COMMAND = "router"
HELP = "run the OpenAI-compatible router"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from router import reasoning, tool_parsers
    from router.policies import POLICIES

    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--redis", default=defaults.REDIS_URL,
                        help="Redis URL of the cluster registry")
    parser.add_argument("--redis-prefix", default=defaults.REDIS_KEY_PREFIX,
                        help="key prefix (one per cluster)")
    parser.add_argument("--model", default="demo",
                        help="the model the workers serve (for its name and tokenizer)")
    parser.add_argument("--served-model-name", default=None,
                        help="name clients put in 'model' (default: the model's name)")
    parser.add_argument("--tokenizer", default=None,
                        help="directory with tokenizer.json (default: from --model)")
    parser.add_argument("--cache-dir", default=None, help="pdserve cache (for --model demo)")
    parser.add_argument("--policy", choices=POLICIES, default="kv_aware",
                        help="prefill placement policy")
    parser.add_argument("--load-weight", type=float, default=1.0,
                        help="kv_aware: weight of queued prefill tokens against cached tokens")
    parser.add_argument("--local-prefill-threshold", type=int, default=32,
                        help="prefill on the decode worker when at most this many prompt tokens "
                             "are uncached")
    parser.add_argument("--prefill-saturation-tokens", type=int, default=65536,
                        help="queued tokens at which a prefill worker counts as saturated")
    parser.add_argument("--block-size", type=int, default=defaults.BLOCK_SIZE_TOKENS,
                        help="must match the workers")
    parser.add_argument("--hash-seed", default=defaults.HASH_SEED, help="must match the workers")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20,
                        help="larger request bodies get 413")
    parser.add_argument("--api-key", action="append", default=[],
                        help="accepted API key (repeat for several); none: no authentication")
    parser.add_argument("--api-keys-file", type=Path, default=None,
                        help="file with one accepted API key per line")
    parser.add_argument("--docs", action="store_true",
                        help="serve the interactive API docs (/docs, /redoc, /openapi.json); "
                             "off by default")
    parser.add_argument("--share-cache-across-keys", action="store_true",
                        help="with API keys: let all keys share one prefix cache (default: each "
                             "key caches in a namespace of its own, so no tenant's cached "
                             "prefix shows in another's cached_tokens)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context limit (default: the smallest among decode workers)")
    parser.add_argument("--max-tokens-default", type=int, default=1024,
                        help="output cap when a request omits max_tokens (then: the smaller of "
                             "this and the rest of the context); 0: the rest of the context")
    parser.add_argument("--lenient", action="store_true",
                        help="ignore request fields pdserve does not implement (unknown "
                             "fields, store: true, audio modalities...) with a warning, instead "
                             "of refusing them with 400")
    parser.add_argument("--chat-template", default=None,
                        help="a Jinja chat template file used instead of the model's own (e.g. "
                             "one that renders tools)")
    parser.add_argument("--tool-call-parser", choices=tool_parsers.CHOICES, default="auto",
                        help="how the model writes tool calls: hermes (<tool_call>, Qwen), "
                             "llama3_json, mistral ([TOOL_CALLS]); auto: the one the chat "
                             "template writes; none: tool_choice auto is refused")
    parser.add_argument("--reasoning-parser", choices=reasoning.CHOICES, default="auto",
                        help="split <think>...</think> into reasoning_content: qwen3, "
                             "deepseek_r1 (thinking open from the start); auto: qwen3 when the "
                             "chat template writes <think>; none: leave it in the content")
    parser.add_argument("--workers", type=int, default=1,
                        help="router processes serving --port (SO_REUSEPORT: the kernel spreads "
                             "client connections across them). Not prefill/decode workers. Each "
                             "process follows the registry and the KV events itself; /health and "
                             "/v1/cluster answer for the process that took the connection (its "
                             "pid in the body and in the x-pdserve-router-pid header); /metrics "
                             "for all of them (counters summed, gauges per router_process)")
    parser.add_argument("--max-in-flight-per-worker", type=int, default=256,
                        help="backpressure: requests one router process keeps in flight per "
                             "eligible decode worker (queued or streaming); beyond it, 429 with "
                             "Retry-After (503 when no decode worker is up). 0: unbounded. "
                             "With --workers N the cluster-wide bound is N times this")
    parser.add_argument("--overload-retry-after-s", type=int, default=1,
                        help="seconds in the Retry-After header of a 429")
    parser.add_argument("--rate-limit-rps", type=float, default=0.0,
                        help="requests per second each API key may send (all clients together "
                             "without keys); beyond it 429 with Retry-After. 0: unlimited")
    parser.add_argument("--rate-limit-tps", type=float, default=0.0,
                        help="tokens per second (prompt + output) each API key may use; a key "
                             "over it waits until its debt is paid back. 0: unlimited")
    parser.add_argument("--rate-limit-burst-s", type=float, default=2.0,
                        help="a key may spend this many seconds' worth of its rates at once")
    add_secret_arguments(parser)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error", "critical"],
                        help="info logs one line per request (router.requests); warning "
                             "silences those")


def config_from_args(args: argparse.Namespace):
    from router.config import RouterConfig
    from router.policies import PolicyWeights
    from router.rate_limit import RateLimits

    keys = set(args.api_key)
    if args.api_keys_file:
        keys |= {line.strip() for line in args.api_keys_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
    return RouterConfig(
        host=args.host, port=args.port, redis_url=args.redis, redis_prefix=args.redis_prefix,
        model=args.model, served_model_name=args.served_model_name, tokenizer=args.tokenizer,
        cache_dir=args.cache_dir, policy=args.policy,
        weights=PolicyWeights(load_weight=args.load_weight),
        local_prefill_threshold_tokens=args.local_prefill_threshold,
        prefill_saturation_tokens=args.prefill_saturation_tokens, block_size=args.block_size,
        hash_seed=args.hash_seed, max_body_bytes=args.max_body_bytes,
        api_keys=frozenset(keys), share_cache_across_keys=args.share_cache_across_keys,
        docs=args.docs,
        max_model_len=args.max_model_len,
        max_tokens_default=args.max_tokens_default, lenient=args.lenient,
        chat_template=args.chat_template, tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        processes=args.workers, max_in_flight_per_worker=args.max_in_flight_per_worker,
        overload_retry_after_s=args.overload_retry_after_s,
        cluster_secret=secret_from_args(args, "pdserve router"),
        rate_limits=RateLimits(args.rate_limit_rps, args.rate_limit_tps, args.rate_limit_burst_s),
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from router.serve import serve

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1 or min(args.max_in_flight_per_worker, args.overload_retry_after_s) < 0:
        raise SystemExit("--workers must be >= 1; --max-in-flight-per-worker and "
                         "--overload-retry-after-s >= 0")
    if args.workers > 1 and args.port == 0:
        raise SystemExit("--workers > 1 needs a fixed --port (each process binds it)")
    return serve(config_from_args(args), args.log_level)


def main(argv: list[str] | None = None) -> int:
    from common.cli_main import main_for_command

    return main_for_command(COMMAND, HELP, add_arguments, run, argv)
