"""What programmatic dependent launch buys the decode step (GPU, Hopper): each model's batch-1
and batch-64 decode step with the engine's CUDA graphs captured with PDL (the default), then
captured again without it, then with it again (the spread of the two "on" rows is the run's
noise); same process, same weights, against the step's roofline (bytes read / HBM copy rate
measured in the run). ``--switch`` toggles another decode-step setting the same way instead,
PDL staying on: ``fused_quant`` (``fp8_linear.FUSED_ACTIVATION_QUANT``: the norm and SiLU
kernels hand e4m3 rows to the FP8 linears), ``rope_in_decode``
(``decode_attention.ROPE_IN_DECODE``: RoPE and the KV write inside the decode attention
kernel), ``l2_prefetch`` (``l2_prefetch.ENABLED``: decode attention and the norms ask the L2
for the next projection's weight; ``--norm-prefetch-mb`` / ``--norm-prefetch-programs`` set
how much of it the norms ask for, and from how many programs).

Models (``--models``): ``random:llama-3.1-8b`` bf16; its ``-fp8`` variant with an FP8 KV cache
(weights as stored: 1 byte a linear weight, the bf16 LM head 2); ``random:qwen3-30b-a3b`` bf16
(active bytes at batch 1, the experts 64 tokens are expected to hit at batch 64, as
benchmarks/moe_bench.py counts them).

    python -m benchmarks.pdl_bench [--models llama,fp8,moe] [--switch pdl] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch

from benchmarks.engine_bench import measure_ceilings, ours_generate, random_prompts
from benchmarks.moe_bench import step_bytes as moe_step_bytes
from benchmarks.report import machine_info, print_table, save_json
from engine import EngineConfig, LLMEngine
from engine.kernels import decode_attention, l2_prefetch, pdl
from engine.model.layers import fp8_linear

MODELS = {  # name: (model, kv cache dtype)
    "llama": ("random:llama-3.1-8b", "auto"),
    "fp8": ("random:llama-3.1-8b-fp8", "fp8"),
    "moe": ("random:qwen3-30b-a3b", "auto"),
}
SWITCHES = {  # --switch: the module and the flag each pass sets (read at capture)
    "pdl": (pdl, "ENABLED"),
    "fused_quant": (fp8_linear, "FUSED_ACTIVATION_QUANT"),
    "rope_in_decode": (decode_attention, "ROPE_IN_DECODE"),
    "l2_prefetch": (l2_prefetch, "ENABLED"),
}
PASSES = (("on", True), ("off", False), ("on again", True))  # label, the switch's value


def roofline_ms(engine: LLMEngine, batch: int, ctx: float, kv_bytes: int,
                copy_rate: float) -> float:
    """Bytes a decode step reads / the copy rate: weights as stored, without the embedding
    (one row a token), and the KV of ``batch`` sequences of ``ctx`` tokens."""
    mc = engine.model_config
    if mc.moe is not None:
        return 1e3 * moe_step_bytes(mc, batch, ctx) / copy_rate
    weights = sum(p.numel() * p.element_size() for n, p in engine.runner.model.named_parameters()
                  if "embed_tokens" not in n)
    kv = 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * kv_bytes
    return 1e3 * (weights + batch * ctx * kv) / copy_rate


def bench_model(name: str, args, ceilings: dict) -> dict:
    model, kv_dtype = MODELS[name]
    engine = LLMEngine(EngineConfig(model=model, device="cuda", dtype="bfloat16",
                                    kv_cache_dtype=kv_dtype,
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    max_num_seqs=64, max_num_batched_tokens=8192,
                                    max_graph_batch=64))
    vocab = engine.model_config.vocab_size
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    out = {"model": model, "kv_cache_dtype": kv_dtype, "switch": args.switch, "passes": {}}
    ours_generate(engine, random_prompts(1, 64, vocab, 0), 4)  # warm-up
    module, flag = SWITCHES[args.switch]
    default = getattr(module, flag)
    for label, on in PASSES:
        setattr(module, flag, on)
        engine.runner.graphs.capture()
        rows = {}
        for batch in (1, 64):
            engine.pool.reset_prefix_cache()
            r = ours_generate(engine, random_prompts(batch, args.ctx, vocab, seed=batch), args.gen)
            rows[f"batch{batch}"] = r["decode_step_ms"]
        out["passes"][label] = rows
        print(f"{name} {args.switch} {label}: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in rows.items()), flush=True)
    setattr(module, flag, default)
    out["roofline_ms"] = {f"batch{b}": roofline_ms(engine, b, args.ctx + args.gen / 2, kv_bytes,
                                                   ceilings["hbm_copy_bytes_per_s"])
                          for b in (1, 64)}
    engine.shutdown()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama,fp8,moe",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="pdl",
                        help="the setting toggled on / off / on again")
    parser.add_argument("--ctx", type=int, default=1024, help="decode prompt length")
    parser.add_argument("--gen", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--kv-gib", type=float, default=16.0, help="GPU KV budget")
    parser.add_argument("--norm-prefetch-mb", type=float,
                        help="l2_prefetch.NORM_BYTES in MiB (default: the module's)")
    parser.add_argument("--norm-prefetch-programs", type=int,
                        help="l2_prefetch.NORM_PROGRAMS (default: the module's)")
    parser.add_argument("--out", type=Path,
                        help="default: benchmarks/results/<switch>_gpu.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.norm_prefetch_mb is not None:
        l2_prefetch.NORM_BYTES = int(args.norm_prefetch_mb * 2**20)
    if args.norm_prefetch_programs is not None:
        l2_prefetch.NORM_PROGRAMS = args.norm_prefetch_programs
    if not pdl.enabled(torch.device("cuda")):
        raise SystemExit("PDL is not available here (needs Hopper or later and Triton's gdc)")
    ceilings = measure_ceilings(torch.device("cuda"))
    results = {name: bench_model(name, args, ceilings) for name in args.models.split(",")}
    rows = []
    for name, r in results.items():
        for batch in ("batch1", "batch64"):
            roof = r["roofline_ms"][batch]
            on, off, again = (r["passes"][label][batch] for label, _ in PASSES)
            rows.append([f"{name} decode {batch} step ms", off, on, again, off / on, roof,
                         roof / min(on, again)])
    table = print_table(["metric", f"{args.switch} off", "on", "on again", "off / on",
                         "roofline", "best on vs roofline"], rows)
    out = args.out or Path(f"benchmarks/results/{args.switch}_gpu.json")
    save_json(out, {"switch": args.switch, "ctx": args.ctx, "gen_tokens": args.gen,
                    "l2_prefetch": {"norm_bytes": l2_prefetch.NORM_BYTES,
                                    "norm_programs": l2_prefetch.NORM_PROGRAMS,
                                    "chunk": l2_prefetch.CHUNK},
                    "ceilings": ceilings, "results": results, "table": table, "machine": machine_info()})


if __name__ == "__main__":
    main()
