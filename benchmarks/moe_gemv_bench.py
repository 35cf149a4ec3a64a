"""The batch-1 MoE layer (engine/kernels/moe_gemv.py) at a few tile configurations, on one
``random:qwen3-30b-a3b`` layer's shape (128 experts, hidden 2048, expert width 768, top 8),
against the copy floor of the 8 chosen experts' weights measured in the same run.

Each call routes a different token (random router logits), so the experts it reads change from
call to call as in a model step, and calls are timed inside one CUDA graph
(benchmarks/graph_timing.py).

Beside it, the same model's dense projections at batch 1 (the bf16 GEMV of
engine/kernels/gemv.py: fused q/k/v, the attention output, the router's gate) at a few tiles,
each over weight copies that do not fit in the L2.

    python -m benchmarks.moe_gemv_bench [--out benchmarks/results/moe_gemv.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.engine_bench import hbm_copy_bytes_per_s
from benchmarks.graph_timing import graph_us
from benchmarks.report import machine_info, print_table, save_json

EXPERTS, HIDDEN, INTER, TOP_K = 128, 2048, 768, 8
# (gate_up (BLOCK_N, BLOCK_K, warps), down (BLOCK_N, BLOCK_K, warps)); first: the default.
# (Routing inside the gate_up programs, also swept in session 7, is gone: slower.)
CONFIGS = [((2, 1024, 2), (1, 1024, 1)), ((4, 512, 4), (4, 256, 4)), ((2, 1024, 2), (2, 256, 2)),
           ((2, 2048, 2), (2, 256, 2)), ((1, 2048, 1), (2, 256, 2)), ((2, 1024, 1), (2, 256, 2)),
           ((4, 1024, 2), (2, 256, 2)), ((2, 512, 1), (2, 256, 2)), ((2, 1024, 2), (1, 256, 1)),
           ((2, 1024, 2), (2, 512, 2)), ((2, 1024, 2), (4, 256, 2)), ((1, 1024, 1), (1, 512, 1))]
CALLS = 32  # distinct tokens, one per call in the graph
DENSE_SHAPES = {"qkv_proj": (5120, 2048), "o_proj": (2048, 4096), "router_gate": (128, 2048)}
# (BLOCK_N, BLOCK_K, num_warps, UNROLL); first: the default
DENSE_CONFIGS = [(8, 512, 4, 1), (8, 512, 4, 4), (4, 512, 2, 4), (4, 1024, 4, 2),
                 (2, 1024, 2, 2), (2, 2048, 2, 1), (4, 256, 1, 8), (1, 2048, 1, 1),
                 (2, 512, 1, 4), (8, 1024, 4, 2), (16, 512, 4, 2), (1, 512, 1, 4)]


def name(config) -> str:
    (gn, gk, gw), (dn, dk, dw) = config
    return f"gu{gn}x{gk}w{gw}-dn{dn}x{dk}w{dw}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/moe_gemv.json"))
    args = parser.parse_args()
    from engine.kernels.moe_gemv import moe_gemv

    dev = torch.device("cuda")
    torch.manual_seed(0)
    copy_bw = hbm_copy_bytes_per_s(torch.device("cuda"))
    gate_up = (0.02 * torch.randn(EXPERTS, 2 * INTER, HIDDEN, device=dev)).to(torch.bfloat16)
    down = (0.02 * torch.randn(EXPERTS, HIDDEN, INTER, device=dev)).to(torch.bfloat16)
    xs = torch.randn(CALLS, 1, HIDDEN, device=dev, dtype=torch.bfloat16)
    logits = torch.randn(CALLS, 1, EXPERTS, device=dev, dtype=torch.bfloat16)
    reference = moe_gemv(xs[0], logits[0], gate_up, down, TOP_K, True)[0]
    floor_us = 1e6 * TOP_K * 3 * INTER * HIDDEN * 2 / copy_bw
    results, rows = {}, []
    for config in CONFIGS:
        gu, dn = config
        got = moe_gemv(xs[0], logits[0], gate_up, down, TOP_K, True, gate_up_tiles=gu,
                       down_tiles=dn)[0]
        err = (got.float() - reference.float()).abs().max().item()
        us = graph_us([lambda i=i, gu=gu, dn=dn: moe_gemv(
            xs[i], logits[i], gate_up, down, TOP_K, True, gate_up_tiles=gu, down_tiles=dn)
            for i in range(CALLS)], calls=CALLS)
        results[name(config)] = {"us": us, "max_abs_diff_vs_default": err}
        rows.append([name(config), us, floor_us, floor_us / us, err])
        print(rows[-1], flush=True)
    print(f"HBM copy {copy_bw / 1e9:.0f} GB/s; one MoE layer at batch 1, per call in a CUDA graph")
    table = print_table(["config", "us", "floor us", "vs floor", "max |diff| vs default"], rows)
    dense, dense_table = bench_dense(copy_bw)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "floor_us": floor_us, "results": results,
                         "dense": dense, "table": table, "dense_table": dense_table,
                         "machine": machine_info()})


def bench_dense(copy_bw: float) -> tuple[dict, str]:
    from benchmarks.graph_timing import copies_for
    from engine.kernels.gemv import gemv

    out, rows = {}, []
    for shape, (n, k) in DENSE_SHAPES.items():
        ws = [(0.02 * torch.randn(n, k, device="cuda")).to(torch.bfloat16)
              for _ in range(copies_for(2 * n * k))]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        times = {}
        for bn, bk, nw, un in DENSE_CONFIGS:
            times[f"{bn}x{bk}w{nw}u{un}"] = graph_us([lambda w=w, x=x, c=(bn, bk, nw, un): gemv(
                x, w, block_n=c[0], block_k=c[1], num_warps=c[2], unroll=c[3]) for w in ws])
        best = min(times, key=times.get)
        floor = 2e6 * n * k / copy_bw
        out[shape] = {"n": n, "k": k, "us": times, "best": best, "floor_us": floor}
        default = next(iter(times))
        rows.append([shape, times[default], best, times[best], floor, floor / times[best]])
        print(shape, ", ".join(f"{c} {t:.1f}" for c, t in times.items()), flush=True)
    table = print_table(["bf16 GEMV", "default us", "best config", "best us", "floor us",
                         "best vs floor"], rows)
    return out, table


if __name__ == "__main__":
    main()
