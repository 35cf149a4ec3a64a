"""The paged decode attention kernel (engine/kernels/decode_attention.py) at a few launch
configurations, Llama-3.1-8B's attention shape (32 query heads, 8 KV heads, 128 wide, 16-token
pages in random order), bf16 and FP8 caches, at batch 1 and 64 with 1k-token contexts, against
the copy time of the KV bytes each call reads. Calls run inside one CUDA graph, each on its own
layer's cache (benchmarks/graph_timing.py), as a decode step runs them.

    python -m benchmarks.decode_attention_bench [--out benchmarks/results/decode_attention.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.engine_bench import hbm_copy_bytes_per_s
from benchmarks.graph_timing import graph_us
from benchmarks.report import machine_info, print_table, save_json

HQ, HKV, D, BLOCK, CTX, LAYERS = 32, 8, 128, 16, 1024, 8
# (splits or None for the engine's num_splits, tokens or None for the kernel's default by the
# cache dtype, num_warps, num_stages); first: the engine's launch
CONFIGS = [(None, None, 4, 2), (None, 64, 4, 2), (None, 64, 4, 3), (None, 128, 4, 2),
           (None, 128, 8, 3), (None, 32, 4, 2), (None, 64, 8, 2), (4, 64, 4, 2), (2, 64, 4, 3)]
# FP8 caches: each config with the engine's fp16 math (None) and with bf16 math (False), the
# e4m3 tiles widened to bf16 as before
FP8_MATH = (None, False)


def name(c) -> str:
    splits, tokens, warps, stages = c
    return f"s{splits or 'auto'}-t{tokens or 'auto'}w{warps}st{stages}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/decode_attention.json"))
    args = parser.parse_args()
    from engine.kernels.decode_attention import num_splits, paged_decode_attention

    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    copy_bw = hbm_copy_bytes_per_s(torch.device("cuda"))
    results, rows = {}, []
    g = torch.Generator(device=dev).manual_seed(0)
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        for batch in (1, 64):
            pages = batch * CTX // BLOCK
            caches = [torch.randn(pages, HKV, 2, BLOCK, D, generator=g, device=dev).to(dtype)
                      for _ in range(LAYERS)]
            tables = torch.randperm(pages, generator=g, device=dev).to(torch.int32)
            tables = tables.reshape(batch, CTX // BLOCK)
            lens = torch.full((batch,), CTX, dtype=torch.int32, device=dev)
            q = torch.randn(batch, HQ, D, generator=g, device=dev, dtype=torch.bfloat16)
            floor = 1e6 * batch * CTX * HKV * D * 2 * caches[0].element_size() / copy_bw
            auto = num_splits(batch, HKV, sms)
            reference = None
            maths = FP8_MATH if dtype == torch.float8_e4m3fn else (None,)
            for c, math in [(c, m) for m in maths for c in CONFIGS]:
                splits, tokens, warps, stages = c
                splits = splits or auto

                def call(cache, splits=splits, tokens=tokens, warps=warps, stages=stages, q=q,
                         tables=tables, lens=lens, math=math):
                    return paged_decode_attention(
                        q, cache[:, :, 0], cache[:, :, 1], tables, lens, D ** -0.5, splits,
                        tokens=tokens, num_warps=warps, num_stages=stages, fp16_math=math)

                got = call(caches[0]).float()
                reference = got if reference is None else reference
                us = graph_us([lambda cache=cache, call=call: call(cache) for cache in caches])
                key = f"{str(dtype).split('.')[-1]}-b{batch}-{name(c)}" + (
                    "-bf16math" if math is False else "")
                diff = (got - reference).abs().max().item()
                results[key] = {"us": us, "splits": splits, "floor_us": floor,
                                "max_abs_diff_vs_first": diff}
                rows.append([key, splits, us, floor, floor / us, diff])
                print(rows[-1], flush=True)
    print(f"HBM copy {copy_bw / 1e9:.0f} GB/s; per call in a CUDA graph over {LAYERS} layers")
    table = print_table(["config", "splits", "us", "KV floor us", "vs floor", "max |diff|"],
                        rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "results": results, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
