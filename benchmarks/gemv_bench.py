"""One-token projections: cuBLAS (F.linear) against the decode GEMV kernel (engine/kernels/gemv.py)
on the Llama-3.1-8B projection shapes, bf16, with the HBM copy ceiling measured in the same run.

    python -m benchmarks.gemv_bench [--out benchmarks/results/gemv_h100.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import machine_info, print_table, save_json

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
          "down_proj": (4096, 14336)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gemv.json"))
    args = parser.parse_args()
    from triton.testing import do_bench  # flushes L2 between runs: weights stream from HBM

    from engine.kernels.gemv import DecodeLinear

    dev = torch.device("cuda")
    buffers = [torch.empty(1 << 30, dtype=torch.uint8, device=dev) for _ in range(2)]
    copy_bw = 2 * buffers[0].numel() / (do_bench(lambda: buffers[1].copy_(buffers[0])) * 1e-3)
    buffers.clear()
    rows, results = [], {}
    for name, (n, k) in SHAPES.items():
        linear = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
        linear.__class__ = DecodeLinear
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        with torch.inference_mode():
            cublas_us = 1e3 * do_bench(lambda x=x, w=linear.weight: F.linear(x, w))
            ours_us = 1e3 * do_bench(lambda x=x, m=linear: m(x))
            err = (linear(x).float() - F.linear(x, linear.weight).float()).abs().max().item()
        floor_us = 1e6 * n * k * 2 / copy_bw
        results[name] = {"n": n, "k": k, "cublas_us": cublas_us, "gemv_us": ours_us,
                         "copy_floor_us": floor_us, "max_abs_diff": err}
        rows.append([name, f"{n}x{k}", cublas_us, ours_us, floor_us, cublas_us / ours_us,
                     floor_us / ours_us])
    table = print_table(["projection", "N x K", "cuBLAS us", "GEMV us", "copy floor us",
                         "speedup", "GEMV vs floor"], rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "results": results, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
