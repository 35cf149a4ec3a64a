"""A linear layer whose weights are owned by a pluggable quantization method.

``Linear`` holds only its shape; a ``LinearMethod`` creates its tensors, post-processes them once
they are loaded, and computes ``x @ W.T (+ b)`` (vLLM's quant_method, reduced to what the engine
uses). ``UnquantizedLinearMethod`` is the one implementation: a half- or full-precision weight
``[out_features, in_features]`` under transformers' parameter names, so checkpoints load as is.

FP8 is the second method (``fp8_linear.py``): ``create_weights`` registers the fp8 weight and
its scales (their checkpoint names, so ``load_state`` fills them), and
``process_weights_after_loading`` repacks them for the kernel that ``apply`` calls. The loaders
swap it in by module name while the model is on the meta device
(``loaders/quant_config.py``), so families build plain ``Linear``s. A method with scales
stacks its own parts for ``concat_linears`` (its ``concat``); ``tensor_parallel._shard`` sees
only unquantized tensors (FP8 layers are dequantized on CPU, where TP runs in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearMethod:
    """How a ``Linear`` stores its weight and multiplies by it."""

    def create_weights(self, layer: Linear, bias: bool, device: torch.device | None,
                       dtype: torch.dtype | None) -> None:
        """Register the layer's parameters (shape from ``layer.in/out_features``)."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Once the checkpoint's tensors are in: repack them for ``apply`` (default: as is)."""

    def use_fused_kernels(self, layer: Linear) -> None:
        """On CUDA, switch ``apply`` to this method's own kernels, if it has any."""

    def apply(self, layer: Linear, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """``x @ W.T (+ b)``; ``gated`` (only where ``layer.runs_gemv(x)`` or
        ``takes_gated_rows``): ``x`` is [T, 2 * in], gate then up, and the input is
        SiLU(gate) * up."""
        raise NotImplementedError

    def takes_quantized_rows(self, layer: Linear, x: torch.Tensor) -> bool:
        """Whether ``apply`` would quantize these rows first, and so takes them already
        quantized (``Linear.quantized_input``, from the norm before it). Default: no."""
        return False

    def takes_gated_rows(self, layer: Linear, x: torch.Tensor) -> bool:
        """Whether ``apply`` folds SiLU(gate) * up into its own kernels for this many-row
        ``x`` (default: no, ``Linear.forward`` runs the silu_mul kernel first)."""
        return False


class UnquantizedLinearMethod(LinearMethod):
    """``weight`` [out, in] and an optional ``bias`` in the model dtype; ``F.linear``.

    With fused kernels on, a one-row input (a batch-1 decode step) goes through the Triton
    GEMV of engine/kernels/gemv.py, which reads the weight faster than cuBLAS does there.
    """

    def create_weights(self, layer: Linear, bias: bool, device: torch.device | None,
                       dtype: torch.dtype | None) -> None:
        shape = (layer.out_features, layer.in_features)
        layer.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if bias:
            layer.bias = nn.Parameter(torch.empty(layer.out_features, device=device, dtype=dtype))
        else:
            layer.register_parameter("bias", None)

    def use_fused_kernels(self, layer: Linear) -> None:
        from engine.kernels.gemv import applies
        from engine.kernels.gemv_tiles import bf16_tiles

        # Decided once here, not per call: the decode step is host-bound at small batch.
        layer.decode_gemv = applies(layer)
        layer.gemv_tiles = bf16_tiles(layer.out_features, layer.in_features)

    def apply(self, layer: Linear, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        if layer.runs_gemv(x):
            from engine.kernels.gemv import gemv

            return gemv(x, layer.weight, gated=gated, **layer.gemv_tiles)
        return F.linear(x, layer.weight, layer.bias)


class Linear(nn.Module):
    """``y = x @ W.T (+ b)``; what W is, and how the product runs, is ``method``'s."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 method: LinearMethod | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = method or UnquantizedLinearMethod()
        self.decode_gemv = False  # the methods' use_fused_kernels set it
        self.fp8_kernels = False  # Fp8LinearMethod.use_fused_kernels sets it
        self.skinny_tiles = None  # and this: engine/kernels/fp8_skinny_gemm.py's tiles
        # (input, e4m3 rows, scales) handed over by the norm that made ``input``
        # (layers/norm.py); used once, by the call whose x is that very tensor.
        self.quantized_input = None
        self.method.create_weights(self, bias, device, dtype)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """``gated`` (fused kernels on): ``x`` is [T, 2 * in_features], gate then up, and the
        input is SiLU(gate) * up. A one-row step folds that into the GEMV (a launch fewer per
        layer); otherwise the silu_mul kernel runs first. Through ``__call__`` either way, so
        tensor parallelism's all-reduce hook still follows the down projection."""
        if gated and not self.runs_gemv(x) and not self.method.takes_gated_rows(self, x):
            from engine.kernels.fused_ops import silu_mul

            x, gated = silu_mul(x.contiguous()), False
        return self.method.apply(self, x, gated)

    def runs_gemv(self, x: torch.Tensor) -> bool:
        """A one-row input to a layer its method gave a decode GEMV (batch-1 decode)."""
        return self.decode_gemv and x.dim() == 2 and x.shape[0] == 1

    def use_fused_kernels(self) -> None:
        self.method.use_fused_kernels(self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, method={type(self.method).__name__}")


def concat_linears(parts: list[Linear]) -> Linear:
    """One linear whose output is the parts' outputs side by side (one GEMM instead of several).

    Concatenates the unquantized tensors: a method with scales says how its own combine.
    """
    if hasattr(parts[0].method, "concat"):
        return parts[0].method.concat(parts)
    has_bias = parts[0].bias is not None
    with torch.no_grad():
        weight = torch.cat([p.weight for p in parts])
        fused = Linear(weight.shape[1], weight.shape[0], bias=has_bias, method=parts[0].method,
                       device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every linear's method repack its freshly loaded weights."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.method.process_weights_after_loading(module)
