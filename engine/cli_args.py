"""Command-line flags for the engine, shared by `generate`, `prefill` and `decode`.

The flags map one to one onto ``EngineConfig`` fields; help text lives here, next to them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import defaults


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default="demo",
                   help="'demo' (SmolLM2-135M-Instruct, prepared on first use), "
                        "'random:<shape>' (e.g. random:llama-3.1-8b), a HF model directory, "
                        "or a .gguf file")
    g.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    g.add_argument("--dtype", default="auto",
                   help="'auto' (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16")
    g.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="KV cache element type: auto (the model dtype) or fp8 (e4m3 with "
                        "per-layer K/V scales from the checkpoint, else 1.0; half the bytes "
                        "of bf16). Prefill and decode workers must agree")
    g.add_argument("--quantization", choices=["none", "fp8"], default="none",
                   help="fp8: quantize a bf16/fp32 checkpoint's linear weights to FP8 at load "
                        "(per-channel scales, per-token activations). FP8 checkpoints "
                        "(compressed-tensors, HF fp8) are detected from config.json anyway")
    g.add_argument("--tp", "--tensor-parallel-size", dest="tensor_parallel_size", type=int,
                   default=1, help="tensor-parallel ranks (must divide the KV head count)")
    g.add_argument("--ep", "--expert-parallel-size", dest="expert_parallel_size", type=int,
                   default=1, help="MoE models: split the experts into this many groups across "
                                   "the --tp ranks (must divide --tp and the expert count; "
                                   "1: each rank holds a slice of every expert)")
    g.add_argument("--block-size", type=int, default=defaults.BLOCK_SIZE_TOKENS, help="tokens per KV block")
    g.add_argument("--kv-cache-gib", type=float, default=None,
                   help="KV cache budget per rank in GiB (default: 0.5 on CPU, "
                        "--gpu-memory-utilization of the card on CUDA)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.85,
                   help="share of GPU memory for weights + KV cache when no budget is given")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context limit (prompt + output); default: the model's, capped at 8192")
    g.add_argument("--max-num-seqs", type=int, default=128, help="sequences per batch")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="tokens per engine step; longer prompts are prefilled in chunks")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    g.add_argument("--async-scheduling", choices=["auto", "on", "off"], default="auto",
                   help="launch each decode step while the GPU still runs the last one "
                        "(engine/overlap.py); auto: on for CUDA, off for CPU")
    g.add_argument("--hash-seed", default=defaults.HASH_SEED,
                   help="block-hash seed; every component of a cluster must share it")
    g.add_argument("--seed", type=int, default=0, help="seed for random weights")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="where prepared models live (default: $PDSERVE_CACHE_DIR or "
                        "~/.cache/pdserve)")


def engine_config_from_args(args: argparse.Namespace):
    from engine.config import EngineConfig, default_cache_dir

    return EngineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
        expert_parallel_size=args.expert_parallel_size,
        block_size=args.block_size,
        kv_cache_memory_bytes=None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2**30),
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        async_scheduling={"auto": None, "on": True, "off": False}[args.async_scheduling],
        hash_seed=args.hash_seed,
        seed=args.seed,
        cache_dir=args.cache_dir or default_cache_dir(),
    )
