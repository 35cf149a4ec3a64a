"""FP8 linears, kernel by kernel, on the Llama-3.1-8B projection shapes, ceilings in the same run.

- batch 1: the FP8 GEMV (engine/kernels/fp8_gemv.py) at a few tile configurations, against the
  torch path it replaces (quantize the row with torch ops, pad to 16, ``_scaled_mm``), the bf16
  GEMV on the same shape, and the copy floor of the FP8 weight (1 byte a weight / HBM copy rate);
- activation quantization at 64 and 4096 rows: the one-kernel ``quantize_rows`` against the
  torch ops, and the whole FP8 linear (quantize + ``_scaled_mm``) both ways, with the floor of
  the quantization's own traffic (read bf16, write e4m3).

    python -m benchmarks.fp8_gemv_bench [--out benchmarks/results/fp8_gemv.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import machine_info, print_table, save_json

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
          "down_proj": (4096, 14336)}
CONFIGS = [(8, 1024, 4), (4, 1024, 4), (8, 512, 4), (16, 1024, 8), (8, 2048, 8), (16, 512, 4)]


def torch_linear(x, w, ws):
    """The torch path of Fp8LinearMethod.apply (TRITON_KERNELS off)."""
    from engine.model.layers.fp8_linear import quantize_per_row

    rows = x.shape[0]
    x2 = F.pad(x, (0, 0, 0, -rows % 16))
    xq, xs = quantize_per_row(x2)
    return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, out_dtype=x.dtype)[:rows]


def kernel_linear(x, w, ws):
    from engine.kernels.fp8_quant import quantize_rows

    xq, xs = quantize_rows(x, pad_rows_to=16)
    return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, out_dtype=x.dtype)[:x.shape[0]]


def bench_shape(n: int, k: int, us, copy_bw: float) -> tuple[dict, dict]:
    """(batch-1 results, activation-quantization results by row count) of one projection."""
    from engine.kernels.fp8_gemv import fp8_gemv
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.gemv import gemv
    from engine.model.layers.fp8_linear import quantize_per_row

    dev = torch.device("cuda")
    w16 = (0.02 * torch.randn(n, k, device=dev)).to(torch.bfloat16)
    w, s = quantize_per_row(w16)
    ws = s.reshape(1, -1).contiguous()
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    configs = {f"{bn}x{bk}w{nw}": us(lambda bn=bn, bk=bk, nw=nw: fp8_gemv(
        x, w, ws, block_n=bn, block_k=bk, num_warps=nw)) for bn, bk, nw in CONFIGS}
    one = {"n": n, "k": k, "fp8_gemv_us": configs, "best": min(configs, key=configs.get),
           "torch_path_us": us(lambda: torch_linear(x, w, ws)),
           "bf16_gemv_us": us(lambda: gemv(x, w16)), "fp8_floor_us": 1e6 * n * k / copy_bw}
    many = {}
    for m in (64, 4096):
        xm = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        many[m] = {"torch_quant_us": us(lambda xm=xm: quantize_per_row(xm)),
                   "kernel_quant_us": us(lambda xm=xm: quantize_rows(xm, pad_rows_to=16)),
                   "torch_linear_us": us(lambda xm=xm: torch_linear(xm, w, ws)),
                   "kernel_linear_us": us(lambda xm=xm: kernel_linear(xm, w, ws)),
                   "quant_floor_us": 1e6 * 3 * m * k / copy_bw}
    return one, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp8_gemv.json"))
    args = parser.parse_args()
    from triton.testing import do_bench  # flushes L2 between runs: weights stream from HBM

    def us(fn):
        return 1e3 * do_bench(fn, warmup=5, rep=30)

    dev = torch.device("cuda")
    buffers = [torch.empty(1 << 30, dtype=torch.uint8, device=dev) for _ in range(2)]
    copy_bw = 2 * buffers[0].numel() / (do_bench(lambda: buffers[1].copy_(buffers[0])) * 1e-3)
    buffers.clear()
    gemv_rows, quant_rows, results = [], [], {"gemv": {}, "quant": {}}
    default = "{}x{}w{}".format(*CONFIGS[0])
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        r, many = bench_shape(n, k, us, copy_bw)
        results["gemv"][name] = r
        ours = r["fp8_gemv_us"][default]
        gemv_rows.append([name, r["torch_path_us"], r["bf16_gemv_us"], ours, r["best"],
                          r["fp8_gemv_us"][r["best"]], r["fp8_floor_us"], r["fp8_floor_us"] / ours])
        for m, q in many.items():
            results["quant"][f"{name}_m{m}"] = q
            quant_rows.append([f"{name} M={m}", q["torch_quant_us"], q["kernel_quant_us"],
                               q["quant_floor_us"], q["torch_linear_us"], q["kernel_linear_us"]])
    print(f"HBM copy {copy_bw / 1e9:.0f} GB/s")
    t1 = print_table(["batch 1", "torch path us", "bf16 GEMV us", "FP8 GEMV us (default)",
                      "best config", "best us", "FP8 floor us", "default vs floor"], gemv_rows)
    t2 = print_table(["activations", "torch quant us", "kernel quant us", "quant floor us",
                      "torch linear us", "kernel linear us"], quant_rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "configs": CONFIGS, "results": results,
                         "tables": [t1, t2], "machine": machine_info()})


if __name__ == "__main__":
    main()
