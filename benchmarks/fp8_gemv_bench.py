"""FP8 linears, kernel by kernel, on the Llama-3.1-8B projection shapes, ceilings in the same run.

- batch 1: the FP8 GEMV (engine/kernels/fp8_gemv.py) at a few tile configurations, against the
  torch path it replaces (quantize the row with torch ops, pad to 16, ``_scaled_mm``), the bf16
  GEMV on the same shape, and the copy floor of the FP8 weight (1 byte a weight / HBM copy rate);
- activation quantization at 64 and 4096 rows: the one-kernel ``quantize_rows`` against the
  torch ops, and the whole FP8 linear (quantize + ``_scaled_mm``) both ways beside the bf16
  linear, with the floors of the quantization's own traffic (read bf16, write e4m3) and of the
  FP8 weight read.

Every time is per call inside a CUDA graph, over weight copies that do not fit in the L2
(benchmarks/graph_timing.py says why not ``do_bench``).

    python -m benchmarks.fp8_gemv_bench [--out benchmarks/results/fp8_gemv.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.engine_bench import hbm_copy_bytes_per_s
from benchmarks.graph_timing import copies_for, graph_us
from benchmarks.report import machine_info, print_table, save_json

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
          "down_proj": (4096, 14336)}
# (BLOCK_N, BLOCK_K, num_warps, UNROLL); the first is the kernel's default before UNROLL
CONFIGS = [(8, 1024, 4, 1), (8, 512, 4, 8), (4, 2048, 4, 2), (2, 1024, 1, 4), (4, 512, 1, 8),
           (2, 2048, 2, 2), (4, 1024, 2, 4), (8, 512, 2, 8), (2, 512, 1, 8), (1, 2048, 1, 2),
           (4, 4096, 4, 1), (4, 1024, 4, 1), (4, 2048, 4, 1), (8, 2048, 8, 1), (2, 4096, 4, 1),
           (2, 1024, 2, 1)]


# engine/kernels/fp8_skinny_gemm.py at 64 rows: (block_n, block_k, num_warps, num_stages)
SKINNY_CONFIGS = [(32, 256, 4, 4), (64, 256, 4, 4), (32, 128, 4, 6), (16, 256, 4, 4),
                  (64, 128, 4, 5), (32, 512, 4, 3), (16, 512, 4, 3), (64, 256, 8, 4)]


def skinny_linear(x, w, ws, c):
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.fp8_skinny_gemm import skinny_gemm

    xq, xs = quantize_rows(x)
    return skinny_gemm(xq, xs, w, ws, None, x.dtype, block_n=c[0], block_k=c[1],
                       num_warps=c[2], num_stages=c[3])


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


def config_name(bn: int, bk: int, nw: int, unroll: int) -> str:
    return f"{bn}x{bk}w{nw}u{unroll}"


def bench_shape(n: int, k: int, copy_bw: float) -> tuple[dict, dict]:
    """(batch-1 results, activation-quantization results by row count) of one projection."""
    from engine.kernels.fp8_gemv import fp8_gemv
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.gemv import gemv
    from engine.model.layers.fp8_linear import quantize_per_row

    dev = torch.device("cuda")
    w16s, w8s = [], []
    for _ in range(copies_for(2 * n * k)):  # bf16 copies outnumber the L2; FP8 ones too then
        w16 = (0.02 * torch.randn(n, k, device=dev)).to(torch.bfloat16)
        w, s = quantize_per_row(w16)
        w16s.append(w16)
        w8s.append((w, s.reshape(1, -1).contiguous()))
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)

    def each(fn):
        return [lambda w=w, ws=ws: fn(w, ws) for w, ws in w8s]

    configs, diffs = {}, {}
    reference = (x.float() @ (w8s[0][0].float() * w8s[0][1].reshape(-1, 1)).t())
    for c in CONFIGS:
        def call(w, ws, c=c):
            return fp8_gemv(x, w, ws, block_n=c[0], block_k=c[1], num_warps=c[2], unroll=c[3])

        diffs[config_name(*c)] = (call(*w8s[0]).float() - reference).abs().max().item()
        configs[config_name(*c)] = graph_us(each(call))
    one = {"n": n, "k": k, "fp8_gemv_us": configs, "best": min(configs, key=configs.get),
           "max_abs_diff_vs_fp32": diffs,
           "torch_path_us": graph_us(each(lambda w, ws: torch_linear(x, w, ws))),
           "bf16_gemv_us": graph_us([lambda w=w: gemv(x, w) for w in w16s]),
           "fp8_floor_us": 1e6 * n * k / copy_bw, "bf16_floor_us": 2e6 * n * k / copy_bw}
    many = {}
    for m in (64, 4096):
        xm = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        many[m] = {"torch_quant_us": graph_us([lambda xm=xm: quantize_per_row(xm)]),
                   "kernel_quant_us": graph_us([lambda xm=xm: quantize_rows(xm, pad_rows_to=16)]),
                   "torch_linear_us": graph_us(each(lambda w, ws, xm=xm: torch_linear(xm, w, ws))),
                   "kernel_linear_us": graph_us(each(
                       lambda w, ws, xm=xm: kernel_linear(xm, w, ws))),
                   "bf16_linear_us": graph_us([lambda w=w, xm=xm: F.linear(xm, w) for w in w16s]),
                   "quant_floor_us": 1e6 * 3 * m * k / copy_bw,
                   "fp8_weight_floor_us": 1e6 * n * k / copy_bw}
        if m == 64:
            ref = kernel_linear(xm, *w8s[0]).float()
            skinny, rel = {}, {}
            for c in SKINNY_CONFIGS:
                key = "{}x{}w{}s{}".format(*c)
                got = skinny_linear(xm, *w8s[0], c).float()
                rel[key] = ((got - ref).abs().max() / ref.abs().max()).item()
                skinny[key] = graph_us(each(lambda w, ws, xm=xm, c=c: skinny_linear(xm, w, ws, c)))
            many[m]["skinny_linear_us"] = skinny
            many[m]["skinny_max_rel_diff_vs_scaled_mm"] = rel
            print(f"{n}x{k} M=64 skinny: " + ", ".join(f"{c} {t:.1f}" for c, t in skinny.items())
                  + f"; _scaled_mm {many[m]['kernel_linear_us']:.1f}", flush=True)
    return one, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp8_gemv.json"))
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated projections to run")
    args = parser.parse_args()
    copy_bw = hbm_copy_bytes_per_s(torch.device("cuda"))
    gemv_rows, quant_rows, results = [], [], {"gemv": {}, "quant": {}}
    default = config_name(*CONFIGS[0])
    torch.manual_seed(0)
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        r, many = bench_shape(n, k, copy_bw)
        results["gemv"][name] = r
        best = r["fp8_gemv_us"][r["best"]]
        gemv_rows.append([name, r["torch_path_us"], r["bf16_gemv_us"], r["bf16_floor_us"] /
                          r["bf16_gemv_us"], r["fp8_gemv_us"][default], r["best"], best,
                          r["fp8_floor_us"], r["fp8_floor_us"] / best])
        for m, q in many.items():
            results["quant"][f"{name}_m{m}"] = q
            quant_rows.append([f"{name} M={m}", q["torch_quant_us"], q["kernel_quant_us"],
                               q["quant_floor_us"], q["torch_linear_us"], q["kernel_linear_us"],
                               q["bf16_linear_us"], q["fp8_weight_floor_us"]])
        print(f"{name}: " + ", ".join(f"{c} {us:.1f}" for c, us in r["fp8_gemv_us"].items()),
              flush=True)
    print(f"HBM copy {copy_bw / 1e9:.0f} GB/s; times per call in a CUDA graph over weight "
          "copies that do not fit in the L2")
    t1 = print_table(["batch 1", "torch path us", "bf16 GEMV us", "bf16 vs floor",
                      f"FP8 GEMV us ({default})", "best config", "best us", "FP8 floor us",
                      "best vs floor"], gemv_rows)
    t2 = print_table(["activations", "torch quant us", "kernel quant us", "quant floor us",
                      "torch linear us", "kernel linear us", "bf16 linear us",
                      "FP8 weight floor us"], quant_rows)
    save_json(args.out, {"copy_bytes_per_s": copy_bw, "configs": CONFIGS, "timing":
                         "CUDA graph, distinct weight copies (benchmarks/graph_timing.py)",
                         "results": results, "tables": [t1, t2], "machine": machine_info()})


if __name__ == "__main__":
    main()
