"""The FP8 rows of ``engine_bench --gpu``: the same shape with FP8 weights (``<model>-fp8``,
per-channel, quantized at load) and an FP8 KV cache, against FP8 ceilings measured in the run.

- batch-1 decode at 1k context vs the FP8 roofline: weight bytes as stored (1 byte a linear
  weight, the bf16 LM head 2) plus the FP8 KV read, over the HBM copy rate;
- batch-64 decode at 1k context, and its ratio to batch 1 (target ≤ 1.3);
- prefill of 4k tokens vs the FP8 GEMM rate (``torch._scaled_mm``, 8192³, row-wise scales).
"""

from __future__ import annotations

import torch

from benchmarks.report import median_time


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
    from engine import EngineConfig, LLMEngine, SamplingParams

    device = torch.device("cuda")
    ceilings["fp8_gemm_flops"] = fp8_gemm_flops(device, sync)
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
    rows = []
    for key, r in fp8["decode"].items():
        ms = r["ours"]["decode_step_ms"]
        rows.append([f"FP8 decode {key} step ms", ms, "-", "-", r["roofline_step_ms"],
                     r["roofline_step_ms"] / ms])
    for key, r in fp8["prefill"].items():
        rows.append([f"FP8 prefill {key} ms", 1e3 * r["ours_s"], "-", "-",
                     1e3 * r["model_flops"] / ceilings["fp8_gemm_flops"],
                     r["ours_fp8_gemm_fraction"]])
    b1, b64 = fp8["decode"]["batch1"], fp8["decode"]["batch64"]
    fp8["batch64_over_batch1"] = b64["ours"]["decode_step_ms"] / b1["ours"]["decode_step_ms"]
    return rows
