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
- CUDA, ``block``: dequantized to the model dtype at load (no block-scaled GEMM here yet): the
  format loads and is right, with bf16's memory and speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.layers.linear import Linear, LinearMethod, UnquantizedLinearMethod

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
BLOCK = 128  # the tile of the block-wise format (weight_block_size [128, 128])
STRATEGIES = ("tensor", "channel", "block")


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
        if layer.weight.device.type != "cuda" or self.strategy == "block":
            w = dequantize(layer.weight.data, scale.data, self.strategy, dtype)
            delattr(layer, self.scale_name)
            layer.weight = nn.Parameter(w, requires_grad=False)
            layer.method = UnquantizedLinearMethod()
            return
        # _scaled_mm's row-wise mode: one fp32 scale per output row, laid out [1, out].
        row_scale = scale.data.float().reshape(-1, 1).expand(layer.out_features, 1)
        delattr(layer, self.scale_name)
        layer.weight_scale = nn.Parameter(row_scale.reshape(1, -1).contiguous(),
                                          requires_grad=False)
        self.strategy, self.scale_name = "channel", "weight_scale"

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
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
        fused.method, fused.decode_gemv, fused.compute_dtype = self, False, first.compute_dtype
        fused.weight = nn.Parameter(torch.cat([p.weight.data for p in parts]), requires_grad=False)
        fused.weight_scale = nn.Parameter(torch.cat([p.weight_scale.data for p in parts], dim=1),
                                          requires_grad=False)
        bias = [p.bias for p in parts]
        fused.bias = (nn.Parameter(torch.cat([b.data for b in bias]), requires_grad=False)
                      if bias[0] is not None else None)
        return fused


def quantize_online(layer: Linear) -> None:
    """``--quantization fp8``: a loaded full-precision linear becomes FP8 per channel."""
    w = layer.weight.data
    q, scale = quantize_per_row(w)
    layer.compute_dtype = w.dtype
    layer.method = Fp8LinearMethod("channel")
    layer.weight = nn.Parameter(q, requires_grad=False)
    layer.weight_scale = nn.Parameter(scale, requires_grad=False)
