"""FP8 (e4m3) linear weights: the second ``LinearMethod``, beside the unquantized one.

A weight is stored as ``float8_e4m3fn`` with fp32 scales, ``W ~= fp8 * scale``, in one of three
granularities, under the checkpoint's own names so ``load_state`` fills them as they are:

- ``tensor``: one scale (``weight_scale``, compressed-tensors per-tensor);
- ``channel``: one per output row (``weight_scale`` [out, 1], compressed-tensors per-channel,
  and what ``--quantization fp8`` makes of a bf16/fp32 model);
- ``block``: one per 128x128 tile (``weight_scale_inv`` [ceil(out/128), ceil(in/128)], the HF
  ``fp8`` format of DeepSeek-V3 and Qwen3-FP8; despite the name it multiplies).

How the product runs, decided once after loading (``process_weights_after_loading``):

- CPU: the weight is dequantized to the model dtype and the layer becomes unquantized: correct,
  not fast (there is no FP8 GEMM on CPU), and tensor parallelism then shards it as any weight.
- CUDA, ``tensor`` / ``channel``: activations are quantized per token on the fly (dynamic, one
  scale per row) and ``torch._scaled_mm`` multiplies the two FP8 operands with row-wise scales
  (tensor scales are widened to one per row first).
- CUDA, ``block``: kept in FP8 with its tile scales. With fused kernels, activations are
  quantized per token and 128-wide slice and multiplied by the block-scaled Triton GEMM
  (engine/kernels/fp8_block_gemm.py); without (the eager reference path), the weight is
  dequantized at each call: correct, slow.

With fused kernels on (``use_fused_kernels``, CUDA), a one-row input (a batch-1 decode step)
goes through the FP8 GEMV of engine/kernels/fp8_gemv.py (bf16 activations, the weight widened
in registers: no activation quantization, no padding; all three granularities), and the
per-token quantization before ``_scaled_mm`` is one Triton kernel (engine/kernels/fp8_quant.py)
instead of eight torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.gemv_tiles import SKINNY_GEMM, SKINNY_MAX_ROWS, fp8_tiles, skinny_tiles
from engine.model.layers.linear import Linear, LinearMethod, UnquantizedLinearMethod

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
BLOCK = 128  # the tile of the block-wise format (weight_block_size [128, 128])
STRATEGIES = ("tensor", "channel", "block")
# False: ``use_fused_kernels`` keeps the torch path (torch quantization ops, _scaled_mm at batch
# 1 too), so engine_bench_fp8 can measure both in one run. Read once, when kernels are chosen.
TRITON_KERNELS = True
# At 2-64 rows, the fused add+RMSNorm quantizes the rows it hands to q/k/v and gate_up
# (layers/norm.py), and the down projection's quantization computes SiLU(gate)*up
# (fp8_quant.quantize_silu_rows): 3 kernels fewer a layer, bit for bit the separate kernels.
# H200, Llama-3.1-8B FP8 + FP8 KV, batch 64 at 1k context: 5.50 -> 5.41 ms a step
# (benchmarks/results/fused_quant_gpu.json). Read at each call: benchmarks flip it.
FUSED_ACTIVATION_QUANT = True


def quantize_per_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 rows, fp32 scale per row [rows, 1]) with each row's amax mapped to e4m3's max."""
    amax = w.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / FP8_MAX
    return (w.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor, strategy: str,
               dtype: torch.dtype) -> torch.Tensor:
    """An FP8 weight [out, in] and its scales back in ``dtype``."""
    w = weight.to(torch.float32)
    if strategy == "block":
        out, inp = w.shape
        s = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:out, :inp]
        return (w * s).to(dtype)
    return (w * scale.float().reshape(-1, 1) if scale.numel() > 1 else w * scale.float()).to(dtype)


class Fp8LinearMethod(LinearMethod):
    """An e4m3 ``weight`` [out, in] with scales of one ``strategy`` (see the module doc)."""

    def __init__(self, strategy: str):
        if strategy not in STRATEGIES:
            raise ValueError(f"FP8 weight strategy {strategy!r} not supported; {STRATEGIES}")
        self.strategy = strategy
        self.scale_name = "weight_scale_inv" if strategy == "block" else "weight_scale"

    def create_weights(self, layer: Linear, bias: bool, device: torch.device | None,
                       dtype: torch.dtype | None) -> None:
        out, inp = layer.out_features, layer.in_features
        layer.weight = nn.Parameter(torch.empty(out, inp, device=device, dtype=FP8),
                                    requires_grad=False)
        shape = {"tensor": (1,), "channel": (out, 1),
                 "block": ((out + BLOCK - 1) // BLOCK, (inp + BLOCK - 1) // BLOCK)}[self.strategy]
        setattr(layer, self.scale_name, nn.Parameter(
            torch.empty(shape, device=device, dtype=torch.float32), requires_grad=False))
        if bias:
            layer.bias = nn.Parameter(torch.empty(out, device=device, dtype=dtype))
        else:
            layer.register_parameter("bias", None)
        layer.compute_dtype = dtype

    def process_weights_after_loading(self, layer: Linear) -> None:
        scale = getattr(layer, self.scale_name)
        dtype = layer.compute_dtype or torch.float32
        if self.strategy == "block" and layer.weight.device.type == "cuda":
            return  # as loaded: e4m3 [out, in], weight_scale_inv [out/128, in/128]
        if layer.weight.device.type != "cuda":
            w = dequantize(layer.weight.data, scale.data, self.strategy, dtype)
            delattr(layer, self.scale_name)
            layer.weight = nn.Parameter(w, requires_grad=False)
            layer.method = UnquantizedLinearMethod()
            return
        self.repack_for_scaled_mm(layer)

    def repack_for_scaled_mm(self, layer: Linear) -> None:
        """Tensor / channel scales as _scaled_mm's row-wise mode wants them: one fp32 scale per
        output row, laid out [1, out] (the FP8 GEMV reads the same)."""
        scale = getattr(layer, self.scale_name)
        row_scale = scale.data.float().reshape(-1, 1).expand(layer.out_features, 1)
        delattr(layer, self.scale_name)
        layer.weight_scale = nn.Parameter(row_scale.reshape(1, -1).contiguous(),
                                          requires_grad=False)
        self.strategy, self.scale_name = "channel", "weight_scale"

    def use_fused_kernels(self, layer: Linear) -> None:
        if not TRITON_KERNELS:
            return
        from engine.kernels.fp8_gemv import applies

        # Decided once here, not per call, as the bf16 GEMV is (linear.py).
        layer.decode_gemv = applies(layer.weight, getattr(layer, self.scale_name),
                                    blockwise=self.strategy == "block")
        layer.gemv_tiles = fp8_tiles(layer.out_features, layer.in_features)
        layer.skinny_tiles = (skinny_tiles(layer.out_features, layer.in_features)
                              if SKINNY_GEMM and self.strategy != "block" else None)
        layer.fp8_kernels = True

    def takes_quantized_rows(self, layer: Linear, x: torch.Tensor) -> bool:
        """At 2-64 rows on the skinny GEMM, the rows quantized by the norm before it."""
        return (FUSED_ACTIVATION_QUANT and layer.fp8_kernels and layer.skinny_tiles is not None
                and x.dim() == 2 and 1 < x.shape[0] <= SKINNY_MAX_ROWS)

    def takes_gated_rows(self, layer: Linear, x: torch.Tensor) -> bool:
        """At 2-64 rows on the skinny GEMM: SiLU(gate) * up is computed by the activation
        quantization kernel (fp8_quant.quantize_silu_rows), one launch and one pass fewer."""
        if not self.takes_quantized_rows(layer, x):  # the same rows, the same GEMM
            return False
        from engine.kernels.fp8_quant import silu_quantize_applies

        return silu_quantize_applies(x)

    def apply(self, layer: Linear, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        blockwise = self.strategy == "block"
        scale = getattr(layer, self.scale_name)
        if layer.runs_gemv(x):
            from engine.kernels.fp8_gemv import fp8_gemv

            return fp8_gemv(x, layer.weight, scale, layer.bias, blockwise=blockwise,
                            gated=gated, **layer.gemv_tiles)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
        if blockwise:
            if not layer.fp8_kernels:  # the eager reference path
                w = dequantize(layer.weight, scale, "block", x.dtype)
                return F.linear(x, w, layer.bias)
            from engine.kernels.fp8_block_gemm import block_gemm
            from engine.kernels.fp8_quant import quantize_rows

            xq, xs = quantize_rows(x2.contiguous(), group=BLOCK)
            y = block_gemm(xq, xs, layer.weight, scale, layer.bias, x.dtype)
            return y.reshape(*shape[:-1], layer.out_features)
        if layer.fp8_kernels:
            from engine.kernels.fp8_quant import quantize_rows

            if layer.skinny_tiles is not None and 1 < rows <= SKINNY_MAX_ROWS:
                from engine.kernels.fp8_quant import quantize_silu_rows
                from engine.kernels.fp8_skinny_gemm import skinny_gemm

                handed, layer.quantized_input = layer.quantized_input, None
                if handed is not None and handed[0] is x and not gated:
                    xq, xs = handed[1], handed[2]
                else:
                    xq, xs = (quantize_silu_rows(x2.contiguous()) if gated
                              else quantize_rows(x2.contiguous()))
                y = skinny_gemm(xq, xs, layer.weight, layer.weight_scale, layer.bias, x.dtype,
                                **layer.skinny_tiles)
                return y.reshape(*shape[:-1], layer.out_features)
            xq, xs = quantize_rows(x2.contiguous(), pad_rows_to=16)
        else:
            pad = -rows % 16  # cuBLASLt's FP8 GEMM wants the row count a multiple of 16
            if pad:
                x2 = F.pad(x2, (0, 0, 0, pad))
            xq, xs = quantize_per_row(x2)
        y = torch._scaled_mm(xq, layer.weight.t(), scale_a=xs, scale_b=layer.weight_scale,
                             bias=layer.bias, out_dtype=x.dtype)
        return y[:rows].reshape(*shape[:-1], layer.out_features)

    def concat(self, parts: list[Linear]) -> Linear:
        """Fused q/k/v or gate/up after loading (CUDA): rows and their scales stacked."""
        first = parts[0]
        fused = Linear.__new__(Linear)
        nn.Module.__init__(fused)
        fused.in_features = first.in_features
        fused.out_features = sum(p.out_features for p in parts)
        fused.method, fused.compute_dtype = self, first.compute_dtype
        fused.decode_gemv = fused.fp8_kernels = False  # use_fused_kernels sets them
        fused.skinny_tiles = fused.quantized_input = None
        if self.strategy == "block" and any(p.out_features % BLOCK for p in parts[:-1]):
            return _dequantized_concat(parts)  # tiles would straddle two parts
        fused.weight = nn.Parameter(torch.cat([p.weight.data for p in parts]), requires_grad=False)
        # row-wise [1, out] side by side; block-wise tile rows [out/128, in/128] stacked
        dim = 0 if self.strategy == "block" else 1
        setattr(fused, self.scale_name, nn.Parameter(
            torch.cat([getattr(p, self.scale_name).data for p in parts], dim=dim),
            requires_grad=False))
        bias = [p.bias for p in parts]
        fused.bias = (nn.Parameter(torch.cat([b.data for b in bias]), requires_grad=False)
                      if bias[0] is not None else None)
        return fused


def _dequantized_concat(parts: list[Linear]) -> Linear:
    """Block-wise parts whose tiles do not line up: one unquantized linear of them."""
    dtype = parts[0].compute_dtype or torch.float32
    weight = torch.cat([dequantize(p.weight.data, p.weight_scale_inv.data, "block", dtype)
                        for p in parts])
    bias = [p.bias for p in parts]
    fused = Linear(weight.shape[1], weight.shape[0], bias=bias[0] is not None,
                   device=weight.device, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if bias[0] is not None:
            fused.bias.copy_(torch.cat([b.data for b in bias]))
    return fused


def quantize_online(layer: Linear) -> None:
    """``--quantization fp8``: a loaded full-precision linear becomes FP8 per channel."""
    w = layer.weight.data
    q, scale = quantize_per_row(w)
    layer.compute_dtype = w.dtype
    layer.method = Fp8LinearMethod("channel")
    layer.weight = nn.Parameter(q, requires_grad=False)
    layer.weight_scale = nn.Parameter(scale, requires_grad=False)
