"""MoE engine benchmark (GPU): ``random:qwen3-30b-a3b`` in bf16 against its ceilings and HF
transformers on the same weights, in one run.

- decode batch 1 at a short context against the active-parameter roofline: the bytes one token
  reads (attention, router, its top-k experts, LM head, its KV) / the HBM copy rate measured
  here;
- decode batch 64: the roofline counts the experts 64 tokens are expected to hit per layer
  (uniform routing: E * (1 - (1 - k/E)^64), about all 128);
- prefill of a 4k prompt against the bf16 GEMM rate measured here (2 x active parameters per
  token + attention's quadratic term);
- one MoE layer alone at batch 1, routing and experts from the router's logits (its 8
  experts' bytes / copy rate);
- HF transformers (eager, its default experts implementation) sharing the engine's tensors;
- "before": decode and the layer again on the previous kernels (``use_previous_kernels``:
  eager q/k norms and routing, the grouped MoE kernel at batch 1), graphs captured anew, in
  the same process on the same weights (``--no-before`` skips it).

    python -m benchmarks.moe_bench [--model random:qwen3-30b-a3b] [--no-before] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.engine_bench import (
    hf_generate,
    hf_model_sharing_weights,
    measure_ceilings,
    ours_generate,
    random_prompts,
    sync,
)
from benchmarks.report import machine_info, median_time, print_table, save_json
from engine import EngineConfig, LLMEngine, SamplingParams


def expected_experts_hit(num_experts: int, top_k: int, batch: int) -> float:
    return num_experts * (1 - (1 - top_k / num_experts) ** batch)


def step_bytes(mc, batch: int, ctx: float) -> float:
    """Weight + KV bytes one decode step reads at ``batch`` (bf16)."""
    moe, h = mc.moe, mc.hidden_size
    sparse_layers = mc.num_hidden_layers - len(moe.dense_layers)
    expert_bytes = 2 * 3 * h * moe.moe_intermediate_size
    active = 2 * (mc.num_active_params - mc.vocab_size * mc.hidden_size)  # embedding: rows
    extra = expected_experts_hit(moe.num_experts, moe.top_k, batch) - moe.top_k
    kv = 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * 2
    return active + sparse_layers * extra * expert_bytes + batch * ctx * kv


def use_previous_kernels(model, previous: bool) -> None:
    """``previous``: the kernels before the decode-time MoE kernels (eager Qwen3 q/k norms
    before the RoPE kernel, eager routing, the grouped MoE kernel at every batch size)."""
    from engine.model.layers.moe import SparseMoeBlock

    for layer in model.model.layers:
        attn = layer.self_attn
        attn.fused_qk_norm = not previous and attn.fused_rope_kv and attn.q_norm is not None
        if isinstance(layer.mlp, SparseMoeBlock):
            layer.mlp.fused_routing = not previous


def layer_alone(model, ceilings) -> dict:
    """The first MoE layer's routing and experts at batch 1 (from the router's logits, as the
    block runs them now): time against its 8 experts' bytes."""
    from engine.kernels.fused_moe import fused_experts
    from engine.kernels.moe_gemv import moe_gemv
    from engine.model.layers.moe import route

    block = model.model.layers[0].mlp
    ex = block.experts
    x = torch.randn(1, ex.gate_up_proj.shape[2], device="cuda", dtype=torch.bfloat16)
    logits = block.gate(x)
    if block.fused_routing:
        def layer():
            moe_gemv(x, logits, ex.gate_up_proj, ex.down_proj, block.top_k, block.renormalize)
    else:
        def layer():
            fused_experts(x, ex.gate_up_proj, ex.down_proj,
                          *route(logits, block.top_k, block.renormalize))
    layer()
    graph = torch.cuda.CUDAGraph()  # launch cost out of the way, as in the engine's graphs
    with torch.cuda.graph(graph):
        for _ in range(20):
            layer()
    s = median_time(graph.replay, 10, lambda: sync(x.device)) / 20
    nbytes = block.top_k * 2 * (ex.gate_up_proj[0].numel() + ex.down_proj[0].numel())
    return {"us": 1e6 * s, "bytes": nbytes,
            "fraction_of_copy_rate": nbytes / s / ceilings["hbm_copy_bytes_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:qwen3-30b-a3b")
    parser.add_argument("--ctx", type=int, default=512, help="decode prompt length")
    parser.add_argument("--gen", type=int, default=32, help="tokens per decode request")
    parser.add_argument("--hf-gen", type=int, default=8, help="tokens per HF request")
    parser.add_argument("--prefill-len", type=int, default=4096)
    parser.add_argument("--kv-gib", type=float, default=8.0, help="KV budget")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the decode rows on the previous kernels")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/moe_gpu.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    device = torch.device("cuda")
    ceilings = measure_ceilings(device)
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", dtype="bfloat16",
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    max_num_seqs=64, max_num_batched_tokens=8192,
                                    max_graph_batch=64))
    mc = engine.model_config
    hf = None if args.no_hf else hf_model_sharing_weights(engine)
    out = {"ceilings": ceilings, "params": mc.num_params, "active_params": mc.num_active_params,
           "decode": {}, "layer_batch1": layer_alone(engine.runner.model, ceilings)}
    ours_generate(engine, random_prompts(1, 64, mc.vocab_size, 0), 4)  # warm-up
    for batch in (1, 64):
        prompts = random_prompts(batch, args.ctx, mc.vocab_size, seed=batch)
        engine.pool.reset_prefix_cache()
        ours = ours_generate(engine, prompts, args.gen)
        roofline_ms = 1e3 * step_bytes(mc, batch, args.ctx + args.gen / 2) \
            / ceilings["hbm_copy_bytes_per_s"]
        row = {"ours": ours, "roofline_step_ms": roofline_ms}
        if hf is not None:
            row["hf"] = hf_generate(hf, prompts, args.hf_gen, device)
        out["decode"][f"batch{batch}"] = row
    if not args.no_before:
        model = engine.runner.model
        use_previous_kernels(model, True)
        engine.runner.graphs.capture()  # the same buckets, now on the previous kernels
        out["layer_batch1_before"] = layer_alone(model, ceilings)
        for batch in (1, 64):
            prompts = random_prompts(batch, args.ctx, mc.vocab_size, seed=batch)
            engine.pool.reset_prefix_cache()
            out["decode"][f"batch{batch}"]["before"] = ours_generate(engine, prompts, args.gen)
        use_previous_kernels(model, False)
        engine.runner.graphs.capture()
    prompt = random_prompts(1, args.prefill_len, mc.vocab_size, seed=7)[0]

    def ours_prefill():
        engine.pool.reset_prefix_cache()
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1))
        while engine.has_unfinished():
            engine.step()

    ours_prefill()
    n = args.prefill_len
    flops = 2 * (mc.num_active_params - mc.vocab_size * mc.hidden_size) * n \
        + 2 * mc.num_hidden_layers * mc.num_attention_heads * mc.head_dim * n * n
    pre = {"ours_s": median_time(ours_prefill, 3, lambda: sync(device)), "model_flops": flops}
    if hf is not None:
        ids = torch.tensor([prompt], device=device)

        def hf_prefill():
            with torch.inference_mode():
                hf(ids, logits_to_keep=1)

        hf_prefill()
        pre["hf_s"] = median_time(hf_prefill, 2, lambda: sync(device))
        out["hf_experts_implementation"] = str(getattr(hf.config, "_experts_implementation",
                                                       "default"))
    out["prefill"] = pre
    gemm = ceilings["bf16_gemm_flops"]
    rows = []
    for key, r in out["decode"].items():
        hf_ms = r["hf"]["decode_step_ms"] if "hf" in r else "-"
        before = r["before"]["decode_step_ms"] if "before" in r else "-"
        rows.append([f"decode {key} step ms", r["ours"]["decode_step_ms"], before, hf_ms,
                     r["roofline_step_ms"], r["roofline_step_ms"] / r["ours"]["decode_step_ms"]])
    rows.append([f"prefill {n} ms", 1e3 * pre["ours_s"], "-",
                 1e3 * pre.get("hf_s", float("nan")), 1e3 * flops / gemm,
                 flops / gemm / pre["ours_s"]])
    lb = out["layer_batch1"]
    lb_before = out["layer_batch1_before"]["us"] if "layer_batch1_before" in out else "-"
    rows.append(["one MoE layer, batch 1, us", lb["us"], lb_before, "-",
                 1e6 * lb["bytes"] / ceilings["hbm_copy_bytes_per_s"],
                 lb["fraction_of_copy_rate"]])
    print(f"{args.model}: {mc.num_params / 1e9:.1f}B params, {mc.num_active_params / 1e9:.2f}B "
          f"active; HBM copy {ceilings['hbm_copy_bytes_per_s'] / 1e9:.0f} GB/s, bf16 GEMM "
          f"{gemm / 1e12:.0f} TFLOP/s")
    table = print_table(["metric", "pdserve", "pdserve before", "HF transformers", "ceiling",
                         "ours vs ceiling"], rows)
    engine.shutdown()
    save_json(args.out, {"model": args.model, "dtype": "bfloat16", "ctx": args.ctx,
                         "gen_tokens": args.gen, "hf_gen_tokens": args.hf_gen, **out,
                         "table": table, "machine": machine_info()})


if __name__ == "__main__":
    main()
