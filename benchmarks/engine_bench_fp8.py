"""The FP8 rows of ``engine_bench --gpu``: the same shape with FP8 weights (``<model>-fp8``,
per-channel, quantized at load) and an FP8 KV cache, against FP8 ceilings measured in the run.

- batch-1 decode at 1k context vs the FP8 roofline: weight bytes as stored (1 byte a linear
  weight, the bf16 LM head 2) plus the FP8 KV read, over the HBM copy rate;
- batch-64 decode at 1k context, and its ratio to batch 1 (target ≤ 1.3);
- prefill of 4k tokens vs the FP8 GEMM rate (``torch._scaled_mm``, 8192³, row-wise scales).

Each row once per path, same GPU, same run (``--fp8-paths``): ``kernels`` (the FP8 GEMV at
batch 1, one-kernel activation quantization before ``_scaled_mm``), ``skinny`` (``kernels``
with the skinny FP8 GEMM at 2-64 rows), ``fused`` (``skinny`` with
``fp8_linear.FUSED_ACTIVATION_QUANT``: the norm and SiLU kernels quantize the rows; the
default) and ``torch`` (what came before: torch ops quantize every
linear's activations, ``_scaled_mm`` on 16 padded rows at batch 1).

    python -m benchmarks.engine_bench_fp8 [--fp8-paths fused,torch] [--out ...]   # FP8 only
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from benchmarks.report import machine_info, median_time, print_table, save_json
from engine.model.layers import fp8_linear

# (fp8_linear.TRITON_KERNELS, SKINNY_GEMM, FUSED_ACTIVATION_QUANT) while the engine loads and
# captures its graphs
PATHS = {"kernels": (True, False, False), "skinny": (True, True, False),
         "fused": (True, True, True), "torch": (False, False, False)}


def fp8_gemm_flops(device: torch.device, sync) -> float:
    n = 8192
    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    sa = torch.ones(n, 1, device=device)
    sb = torch.ones(1, n, device=device)

    def mm():
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    mm()
    return 2 * n**3 / median_time(mm, 20, lambda: sync(device))


def bench_fp8(args, ceilings: dict, ours_generate, random_prompts, sync) -> dict:
    """One FP8 engine per path of ``args.fp8_paths``, one after the other."""
    ceilings["fp8_gemm_flops"] = fp8_gemm_flops(torch.device("cuda"), sync)
    out = {}
    for path in args.fp8_paths.split(","):
        saved = _settings()
        _apply(PATHS[path])
        try:
            out[path] = bench_fp8_path(args, ceilings, ours_generate, random_prompts, sync)
        finally:
            _apply(saved)
        gc.collect()
        torch.cuda.empty_cache()
    return out


def _settings() -> tuple:
    return (fp8_linear.TRITON_KERNELS, fp8_linear.SKINNY_GEMM,
            fp8_linear.FUSED_ACTIVATION_QUANT)


def _apply(settings: tuple) -> None:
    fp8_linear.TRITON_KERNELS, fp8_linear.SKINNY_GEMM, fp8_linear.FUSED_ACTIVATION_QUANT = settings


def bench_fp8_path(args, ceilings: dict, ours_generate, random_prompts, sync) -> dict:
    from engine import EngineConfig, LLMEngine, SamplingParams

    device = torch.device("cuda")
    engine = LLMEngine(EngineConfig(model=args.model + "-fp8", device="cuda", dtype="bfloat16",
                                    kv_cache_dtype="fp8",
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    max_num_seqs=128, max_num_batched_tokens=8192))
    mc = engine.model_config
    model = engine.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                       if "embed_tokens" not in n)  # the embedding: one row a token
    kv_bytes_per_token = 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 1
    flops_per_token = 2 * (mc.num_params - mc.vocab_size * mc.hidden_size)
    out = {"weight_bytes": weight_bytes, "decode": {}, "prefill": {}}
    ctx, vocab = 1024, mc.vocab_size
    ours_generate(engine, random_prompts(1, 64, vocab, 0), 4)  # warm-up
    for batch in (1, 64):
        prompts = random_prompts(batch, ctx, vocab, seed=batch)
        engine.pool.reset_prefix_cache()
        ours = ours_generate(engine, prompts, args.gen)
        step_bytes = weight_bytes + batch * (ctx + args.gen / 2) * kv_bytes_per_token
        out["decode"][f"batch{batch}"] = {
            "ours": ours, "roofline_step_ms": 1e3 * step_bytes / ceilings["hbm_copy_bytes_per_s"]}
    length = 4096
    prompt = random_prompts(1, length, vocab, seed=length)[0]
    params = SamplingParams(temperature=0, max_tokens=1)

    def prefill():
        engine.pool.reset_prefix_cache()
        engine.add_request(prompt, params)
        while engine.has_unfinished():
            engine.step()

    prefill()
    ours_s = median_time(prefill, 5, lambda: sync(device))
    flops = flops_per_token * length + 2 * mc.num_hidden_layers * mc.num_attention_heads \
        * mc.head_dim * length**2
    out["prefill"][f"len{length}"] = {"ours_s": ours_s, "model_flops": flops,
                                      "ours_fp8_gemm_fraction":
                                          flops / ours_s / ceilings["fp8_gemm_flops"]}
    engine.shutdown()
    return out


def fp8_rows(fp8: dict, ceilings: dict) -> list[list]:
    """Table rows (engine_bench's columns), each path's beside the others'."""
    rows = []
    for path, r in fp8.items():
        for key, d in r["decode"].items():
            ms = d["ours"]["decode_step_ms"]
            rows.append([f"FP8 decode {key} step ms ({path})", ms, "-", "-",
                         d["roofline_step_ms"], d["roofline_step_ms"] / ms])
        for key, p in r["prefill"].items():
            rows.append([f"FP8 prefill {key} ms ({path})", 1e3 * p["ours_s"], "-", "-",
                         1e3 * p["model_flops"] / ceilings["fp8_gemm_flops"],
                         p["ours_fp8_gemm_fraction"]])
        b1, b64 = r["decode"]["batch1"], r["decode"]["batch64"]
        r["batch64_over_batch1"] = b64["ours"]["decode_step_ms"] / b1["ours"]["decode_step_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-3.1-8b",
                        help="the bf16 shape; its -fp8 variant is benchmarked")
    parser.add_argument("--gen", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--kv-gib", type=float, default=20.0, help="GPU KV budget")
    add_paths_flag(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_gpu_fp8.json"),
                        help="JSON output path")
    args = parser.parse_args()
    from benchmarks.engine_bench import measure_ceilings, ours_generate, random_prompts, sync

    ceilings = measure_ceilings(torch.device("cuda"))
    fp8 = bench_fp8(args, ceilings, ours_generate, random_prompts, sync)
    rows = fp8_rows(fp8, ceilings)
    print(f"ceilings: HBM copy {ceilings['hbm_copy_bytes_per_s'] / 1e9:.0f} GB/s, "
          f"FP8 GEMM {ceilings['fp8_gemm_flops'] / 1e12:.0f} TFLOP/s")
    table = print_table(["metric", "pdserve", "ceiling", "ours vs ceiling"],
                        [[r[0], r[1], r[4], r[5]] for r in rows])
    for path, r in fp8.items():
        print(f"FP8 weights + FP8 KV ({path}), batch-64 / batch-1 step: "
              f"{r['batch64_over_batch1']:.2f}")
    save_json(args.out, {"model": args.model + "-fp8", "dtype": "bfloat16", "gen_tokens": args.gen,
                         "ceilings": ceilings, "fp8": fp8, "table": table,
                         "machine": machine_info()})


def add_paths_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fp8-paths", default="fused,torch",
                        help="FP8 linear paths to run, comma-separated: kernels (Triton FP8 "
                             "GEMV + fused quantization), skinny (kernels, plus the skinny "
                             "FP8 GEMM at 2-64 rows instead of _scaled_mm), fused (skinny, "
                             "plus the activation quantization folded into the norms and "
                             "SiLU*mul: the engine's default), torch (torch-op "
                             "quantization, _scaled_mm at every batch size)")


if __name__ == "__main__":
    main()
