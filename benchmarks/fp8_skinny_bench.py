"""The decode-batch FP8 GEMM (engine/kernels/fp8_skinny_gemm.py) alone, at 16 and 64 rows, on
the Llama-3.1-8B projection shapes: tile and split-K configurations against the tiles the
engine picks (engine/kernels/gemv_tiles.py's ``skinny_tiles``) and the copy floor of the FP8
weight, measured in the same run. The activations come quantized (in a decode step the RMSNorm
and SiLU*mul kernels quantize them), so only the GEMM is timed: per call inside a CUDA graph
over weight copies that do not fit in the L2 (benchmarks/graph_timing.py).

Why split-K (issue 19's batch-64 step): a program owns a band of output columns and streams
its weight rows through K, reading all M x K activations again from the L2 for every band.
At 64 rows and 32-column bands that is twice the weight's bytes for o_proj, q/k/v and down;
wider bands read them fewer times, and cutting K among several programs keeps the GPU full.

    python -m benchmarks.fp8_skinny_bench [--rows 16 64] [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.engine_bench import hbm_copy_bytes_per_s
from benchmarks.fp8_gemv_bench import SHAPES
from benchmarks.graph_timing import copies_for, graph_us
from benchmarks.report import machine_info, print_table, save_json

# (block_n, block_k, num_warps, num_stages, split_k)
CONFIGS = [(32, 256, 4, 4, 1), (64, 128, 4, 5, 1), (128, 128, 4, 5, 1), (32, 256, 4, 4, 2),
           (64, 256, 4, 4, 2), (64, 128, 4, 5, 2), (128, 128, 4, 5, 2), (128, 128, 8, 4, 2),
           (64, 128, 4, 5, 4), (64, 256, 4, 4, 4), (128, 128, 4, 5, 4), (128, 256, 4, 3, 4),
           (128, 128, 8, 4, 4), (256, 128, 8, 4, 4), (128, 128, 4, 5, 8)]


def name(c) -> str:
    return "{}x{}w{}s{}k{}".format(*c)


def main() -> None:
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.fp8_skinny_gemm import skinny_gemm, split_k_applies
    from engine.kernels.gemv_tiles import skinny_tiles
    from engine.model.layers.fp8_linear import quantize_per_row

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp8_skinny.json"))
    args = parser.parse_args()
    dev = torch.device("cuda")
    copy_bw = hbm_copy_bytes_per_s(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    rows_out, results = [], {}
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        weights = []
        for _ in range(copies_for(n * k)):
            w, ws = quantize_per_row(0.02 * torch.randn(n, k, generator=g, device=dev))
            weights.append((w, ws.reshape(1, -1).contiguous()))
        engine = skinny_tiles(n, k)
        engine_c = (engine["block_n"], engine["block_k"], engine["num_warps"],
                    engine["num_stages"], engine.get("split_k", 1))
        floor = 1e6 * n * k / copy_bw
        for m in args.rows:
            xq, xs = quantize_rows(torch.randn(m, k, generator=g, device=dev)
                                   .to(torch.bfloat16))
            ref = (xq.float() * xs[:m]) @ (weights[0][0].float()
                                                * weights[0][1].reshape(-1, 1)).t()
            timed = {}
            for c in dict.fromkeys([engine_c, *CONFIGS]):
                if not split_k_applies(k, c[1], c[4]):
                    continue
                tiles = dict(block_n=c[0], block_k=c[1], num_warps=c[2], num_stages=c[3],
                             split_k=c[4])

                def call(w, ws, tiles=tiles, xq=xq, xs=xs):
                    return skinny_gemm(xq, xs, w, ws, None, torch.bfloat16, **tiles)

                try:
                    got = call(*weights[0]).float()
                    us = graph_us([lambda w=w, ws=ws, call=call: call(w, ws)
                                   for w, ws in weights])
                except Exception as e:  # shared memory or registers out of range
                    print(f"{shape} M={m} {name(c)}: {type(e).__name__} {str(e)[:160]}")
                    continue
                rel = ((got - ref).abs().max() / ref.abs().max()).item()
                timed[name(c)] = {"us": us, "max_rel_diff_vs_fp32": rel}
            best = min(timed, key=lambda c: timed[c]["us"])
            results[f"{shape}_m{m}"] = {"n": n, "k": k, "rows": m, "floor_us": floor,
                                        "engine_tiles": name(engine_c), "configs": timed,
                                        "best": best}
            eng = timed[name(engine_c)]["us"]
            rows_out.append([shape, m, name(engine_c), eng, best, timed[best]["us"], floor,
                             floor / eng, floor / timed[best]["us"],
                             max(t["max_rel_diff_vs_fp32"] for t in timed.values())])
            print(f"{shape} M={m}: " + ", ".join(f"{c} {t['us']:.1f}" for c, t in timed.items()),
                  flush=True)
    print(f"HBM copy {copy_bw / 1e9:.0f} GB/s; per call in a CUDA graph over weight copies")
    table = print_table(["shape", "rows", "engine tiles", "engine us", "best", "best us",
                         "FP8 floor us", "engine vs floor", "best vs floor", "max rel diff"],
                        rows_out)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "configs": CONFIGS, "results": results,
                         "table": table, "machine": machine_info()})


if __name__ == "__main__":
    main()
