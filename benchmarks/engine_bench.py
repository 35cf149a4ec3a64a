"""Engine baseline: our engine against HF transformers on the same weights, in one run.

CPU (default): the demo model in fp32 — decode tokens/s at batch 1, and total tokens/s for 32
concurrent requests — for our engine and for HF ``generate``.

GPU (``--gpu``): ``random:llama-3.1-8b`` in bf16 — batch-1 and batch-64 decode step time at 1k
context against the HBM roofline, and prefill of 2k/4k prompts against the bf16 GEMM ceiling,
both ceilings measured in this run; HF on the same weights alongside. Then the FP8 rows
(engine_bench_fp8.py): FP8 weights and KV cache against the FP8 roofline and GEMM rate.

    python -m benchmarks.engine_bench [--gpu] [--out benchmarks/results/engine_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.report import machine_info, median_time, print_table, save_json
from engine import EngineConfig, LLMEngine, SamplingParams


def random_prompts(num: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (num, length), generator=g).tolist()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- our engine -----------------------------------------------------------------------------
def ours_generate(engine: LLMEngine, prompts: list[list[int]], gen: int) -> dict[str, float]:
    """Run all prompts concurrently; split time into prefill (until every first token) and decode."""
    params = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
    dev = engine.runner.device
    sync(dev)
    start = time.perf_counter()
    for p in prompts:
        engine.add_request(p, params)
    started_ids: set[str] = set()  # requests that have their first token (prefill done)
    decode_start = None
    passes_at_start = 0
    while engine.has_unfinished():
        deltas = engine.step()
        if decode_start is None:
            started_ids.update(d.request_id for d in deltas)
            if len(started_ids) >= len(prompts):
                sync(dev)
                decode_start = time.perf_counter()
                passes_at_start = engine.runner.num_forward_passes
    sync(dev)
    end = time.perf_counter()
    # Forward passes, not step() calls: an overlapped engine's last call only drains.
    decode_steps = engine.runner.num_forward_passes - passes_at_start
    decode_s = end - decode_start
    return {
        "total_s": end - start,
        "prefill_s": decode_start - start,
        "decode_steps": decode_steps,
        "decode_step_ms": 1e3 * decode_s / max(decode_steps, 1),
        "decode_tok_per_s": len(prompts) * decode_steps / decode_s,
        "total_tok_per_s": len(prompts) * gen / (end - start),
    }


def sync_loop(engine: LLMEngine, run):
    """``run()`` with the engine's overlapped decode switched off: the ablation of one change."""
    saved, engine.overlap = engine.overlap, None
    try:
        return run()
    finally:
        engine.overlap = saved


# -- HF transformers ------------------------------------------------------------------------
def hf_model_sharing_weights(engine: LLMEngine):
    """A transformers model that uses the engine's weight tensors (no second copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**engine.model_config.to_hf_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=engine.runner.dtype,
                                                 attn_implementation="sdpa")
    state = engine.runner.model.hf_state_dict()
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) were left on meta: build that module afresh.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(rotary.config).to(engine.runner.device)
    return model.eval()


def hf_generate(model, prompts: list[list[int]], gen: int, device: torch.device) -> dict[str, float]:
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0, temperature=None,
                  top_p=None, top_k=None, attention_mask=mask)

    def run(n):
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)

    run(2)  # warm-up
    prefill_s = median_time(lambda: run(1), 2, lambda: sync(device))
    total_s = median_time(lambda: run(gen), 1, lambda: sync(device))
    decode_s = total_s - prefill_s
    return {
        "total_s": total_s,
        "prefill_s": prefill_s,
        "decode_step_ms": 1e3 * decode_s / (gen - 1),
        "decode_tok_per_s": len(prompts) * (gen - 1) / decode_s,
        "total_tok_per_s": len(prompts) * gen / total_s,
    }


# -- CPU ------------------------------------------------------------------------------------
def bench_cpu(args) -> dict:
    engine = LLMEngine(EngineConfig(model=args.model, device="cpu", dtype="float32",
                                    max_num_seqs=64))
    vocab = engine.model_config.vocab_size
    results = {}
    hf = hf_model_sharing_weights(engine)
    for batch in (1, 32):
        prompts = random_prompts(batch, args.prompt_len, vocab, seed=batch)
        ours_generate(engine, prompts[:1], 4)  # warm-up
        engine.pool.reset_prefix_cache()
        ours = ours_generate(engine, prompts, args.gen)
        engine.pool.reset_prefix_cache()
        theirs = hf_generate(hf, prompts, args.gen, torch.device("cpu"))
        results[f"batch{batch}"] = {"ours": ours, "hf": theirs}
    rows = []
    for key, r in results.items():
        rows.append([key, "decode tok/s", r["ours"]["decode_tok_per_s"], r["hf"]["decode_tok_per_s"],
                     r["ours"]["decode_tok_per_s"] / r["hf"]["decode_tok_per_s"]])
        rows.append([key, "total tok/s", r["ours"]["total_tok_per_s"], r["hf"]["total_tok_per_s"],
                     r["ours"]["total_tok_per_s"] / r["hf"]["total_tok_per_s"]])
    table = print_table(["batch", "metric", "pdserve", "HF transformers", "ratio"], rows)
    return {"model": args.model, "dtype": "float32", "prompt_len": args.prompt_len,
            "gen_tokens": args.gen, "results": results, "table": table}


# -- GPU ------------------------------------------------------------------------------------
def hbm_copy_bytes_per_s(device: torch.device) -> float:
    """Device-to-device copy rate (read + write) of 2 GiB: the rooflines' bandwidth. Timed
    eagerly: captured in a CUDA graph, a copy becomes a memcpy node that the copy engines run
    (2.7 TB/s on an H200, against 4.2 by the SMs)."""
    n_bytes = 2 << 30
    buffers = [torch.randn(n_bytes // 2, dtype=torch.bfloat16, device=device)]
    buffers.append(torch.empty_like(buffers[0]))
    copy_s = median_time(lambda: buffers[1].copy_(buffers[0]), 20, lambda: sync(device))
    return 2 * n_bytes / copy_s


def measure_ceilings(device: torch.device) -> dict[str, float]:
    copy_rate = hbm_copy_bytes_per_s(device)
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    a @ b
    gemm_s = median_time(lambda: a @ b, 20, lambda: sync(device))
    return {"hbm_copy_bytes_per_s": copy_rate, "bf16_gemm_flops": 2 * n**3 / gemm_s}


def bench_gpu(args) -> dict:
    device = torch.device("cuda")
    ceilings = measure_ceilings(device)
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", dtype="bfloat16",
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    max_num_seqs=128, max_num_batched_tokens=8192))
    mc = engine.model_config
    vocab = mc.vocab_size
    weight_bytes = 2 * (mc.num_params - mc.vocab_size * mc.hidden_size)  # embedding: rows only
    kv_bytes_per_token = 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 2
    flops_per_token = 2 * (mc.num_params - mc.vocab_size * mc.hidden_size)
    hf = hf_model_sharing_weights(engine)
    out = {"ceilings": ceilings, "decode": {}, "prefill": {}}
    ctx = 1024
    ours_generate(engine, random_prompts(1, 64, vocab, 0), 4)  # warm-up
    for batch in (1, 64):
        prompts = random_prompts(batch, ctx, vocab, seed=batch)
        engine.pool.reset_prefix_cache()
        ours = ours_generate(engine, prompts, args.gen)
        ours_sync = sync_loop(engine, lambda prompts=prompts: ours_generate(engine, prompts,
                                                                             args.gen))
        hf_r = hf_generate(hf, prompts, args.gen, device)
        mean_ctx = ctx + args.gen / 2
        step_bytes = weight_bytes + batch * mean_ctx * kv_bytes_per_token
        roofline_ms = 1e3 * step_bytes / ceilings["hbm_copy_bytes_per_s"]
        out["decode"][f"batch{batch}"] = {"ours": ours, "ours_sync_loop": ours_sync, "hf": hf_r,
                                          "roofline_step_ms": roofline_ms}
    for length in (2048, 4096):
        prompt = random_prompts(1, length, vocab, seed=length)[0]
        params = SamplingParams(temperature=0, max_tokens=1)

        def ours_prefill(prompt=prompt, params=params):
            engine.pool.reset_prefix_cache()
            engine.add_request(prompt, params)
            while engine.has_unfinished():
                engine.step()

        ours_prefill()
        ours_s = median_time(ours_prefill, 5, lambda: sync(device))
        ids = torch.tensor([prompt], device=device)

        def hf_prefill(ids=ids):
            with torch.inference_mode():
                hf(ids, logits_to_keep=1)

        hf_prefill()
        hf_s = median_time(hf_prefill, 5, lambda: sync(device))
        flops = flops_per_token * length + 2 * mc.num_hidden_layers * mc.num_attention_heads \
            * mc.head_dim * length**2
        out["prefill"][f"len{length}"] = {
            "ours_s": ours_s, "hf_s": hf_s, "model_flops": flops,
            "ours_gemm_fraction": flops / ours_s / ceilings["bf16_gemm_flops"],
            "hf_gemm_fraction": flops / hf_s / ceilings["bf16_gemm_flops"],
        }
    rows = []
    for key, r in out["decode"].items():
        rows.append([f"decode {key} step ms", r["ours"]["decode_step_ms"],
                     r["ours_sync_loop"]["decode_step_ms"], r["hf"]["decode_step_ms"],
                     r["roofline_step_ms"], r["roofline_step_ms"] / r["ours"]["decode_step_ms"]])
    for key, r in out["prefill"].items():
        rows.append([f"prefill {key} ms", 1e3 * r["ours_s"], "-", 1e3 * r["hf_s"],
                     1e3 * r["model_flops"] / ceilings["bf16_gemm_flops"], r["ours_gemm_fraction"]])
    engine.shutdown()
    if not args.no_fp8:
        from benchmarks.engine_bench_fp8 import bench_fp8, fp8_rows

        out["fp8"] = bench_fp8(args, ceilings, ours_generate, random_prompts, sync)
        rows += fp8_rows(out["fp8"], ceilings)
    print(f"ceilings: HBM copy {ceilings['hbm_copy_bytes_per_s'] / 1e9:.0f} GB/s, "
          f"bf16 GEMM {ceilings['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s"
          + (f", FP8 GEMM {ceilings['fp8_gemm_flops'] / 1e12:.0f} TFLOP/s"
             if "fp8_gemm_flops" in ceilings else ""))
    table = print_table(["metric", "pdserve", "pdserve, sync loop", "HF", "ceiling",
                         "ours vs ceiling"], rows)
    b1, b64 = out["decode"]["batch1"], out["decode"]["batch64"]
    ours_ratio = b64["ours"]["decode_step_ms"] / b1["ours"]["decode_step_ms"]
    print(f"batch-64 / batch-1 step: ours {ours_ratio:.2f}, "
          f"at the roofline {b64['roofline_step_ms'] / b1['roofline_step_ms']:.2f} "
          f"(64 x {ctx}+ tokens of KV read each step besides the weights)")
    for path, r in out.get("fp8", {}).items():
        print(f"FP8 weights + FP8 KV ({path}), batch-64 / batch-1 step: "
              f"{r['batch64_over_batch1']:.2f}")
    return {"model": args.model, "dtype": "bfloat16", "gen_tokens": args.gen, **out,
            "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmark")
    parser.add_argument("--model", default=None,
                        help="default: demo on CPU, random:llama-3.1-8b on GPU")
    parser.add_argument("--prompt-len", type=int, default=64, help="CPU prompt length")
    parser.add_argument("--gen", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--kv-gib", type=float, default=20.0, help="GPU KV budget")
    parser.add_argument("--no-fp8", action="store_true",
                        help="GPU: skip the FP8 rows (FP8 weights and KV, engine_bench_fp8.py)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    from benchmarks.engine_bench_fp8 import add_paths_flag

    add_paths_flag(parser)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.model = args.model or ("random:llama-3.1-8b" if args.gpu else "demo")
    result = bench_gpu(args) if args.gpu else bench_cpu(args)
    result["machine"] = machine_info()
    name = "engine_gpu.json" if args.gpu else "engine_cpu.json"
    save_json(args.out or Path("benchmarks/results") / name, result)


if __name__ == "__main__":
    main()
