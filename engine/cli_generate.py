"""`pdserve generate`: answer prompts with the engine in this process (no cluster)."""

from __future__ import annotations

import argparse
import sys
import time

from engine.cli_args import add_engine_arguments, engine_config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat the flag for several prompts (batched)")
    parser.add_argument("--raw", action="store_true",
                        help="send the prompt as plain text instead of a chat user message")
    parser.add_argument("--system", default=None, help="system message for chat prompts")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--sampling-seed", type=int, default=None)
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from common.sampling_params import SamplingParams
    from engine.llm_engine import LLMEngine

    config = engine_config_from_args(args)
    started = time.perf_counter()
    engine = LLMEngine(config)
    print(f"[pdserve] loaded {engine.source.name} on {engine.runner.device} "
          f"({engine.runner.dtype}) in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    try:
        tok = engine.tokenizer
        if tok is None:
            raise ValueError(f"{config.model} has no tokenizer; text prompts need one")
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_p=args.top_p, top_k=args.top_k, seed=args.sampling_seed)
        ids = []
        for prompt in args.prompt:
            if args.raw or not tok.chat_template:
                ids.append(tok.encode(prompt))
            else:
                messages = [{"role": "system", "content": args.system}] if args.system else []
                ids.append(tok.encode_chat([*messages, {"role": "user", "content": prompt}]))
        request_ids = [engine.add_request(p, params) for p in ids]
        texts = {rid: "" for rid in request_ids}
        num_tokens = 0
        started = time.perf_counter()
        while engine.has_unfinished():
            for delta in engine.step():
                texts[delta.request_id] += delta.text_delta
                num_tokens += len(delta.new_token_ids)
                if len(request_ids) == 1:
                    print(delta.text_delta, end="", flush=True)
        elapsed = time.perf_counter() - started
        if len(request_ids) == 1:
            print()
        else:
            for prompt, rid in zip(args.prompt, request_ids, strict=True):
                print(f"### {prompt}\n{texts[rid]}\n")
        print(f"[pdserve] {num_tokens} tokens in {elapsed:.2f}s "
              f"({num_tokens / max(elapsed, 1e-9):.1f} tok/s)", file=sys.stderr)
    finally:
        engine.shutdown()
    return 0
