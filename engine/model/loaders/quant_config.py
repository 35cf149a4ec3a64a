"""Which linears of a checkpoint are FP8, and how: read from its config.json.

Two formats, as users have them:

- compressed-tensors (llm-compressor's output, ``quant_method: compressed-tensors``,
  ``format: float-quantized``): parsed by the ``compressed-tensors`` package itself
  (``QuantizationConfig``; its ``is_match`` decides which modules each group targets and which
  are ignored). Weights: 8-bit float, per tensor or per channel; activations: dynamic, or none.
- HF ``quant_method: fp8`` (DeepSeek-V3, Qwen3-FP8): 128x128 blocks of ``weight_scale_inv``,
  dynamic activations, ``modules_to_not_convert`` left in full precision.

``apply_fp8_scheme`` swaps the chosen linears' methods while the model is still on the meta
device, so their FP8 tensors are allocated once, already in their own dtypes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from engine.model.layers.fp8_linear import Fp8LinearMethod
from engine.model.layers.linear import Linear


@dataclass(frozen=True)
class Fp8Scheme:
    """The FP8 strategy of each linear, by module name (None: left unquantized)."""

    strategy_of: Callable[[str, nn.Module], str | None]
    source: str  # which format it came from, for messages


def read_fp8_scheme(model_dir: str | Path) -> Fp8Scheme | None:
    """The checkpoint's FP8 scheme, or None when its linears are not quantized."""
    path = Path(model_dir) / "config.json"
    qc = json.loads(path.read_text()).get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method == "fp8":
        return _hf_fp8(qc)
    raise ValueError(f"{path}: quantization method {method!r} is not supported "
                     "(supported: compressed-tensors float-quantized, fp8)")


def _compressed_tensors(qc: dict) -> Fp8Scheme:
    try:
        from compressed_tensors.quantization import QuantizationConfig
        from compressed_tensors.utils.match import is_match
    except ImportError as e:
        raise ImportError("compressed-tensors checkpoints need the `compressed-tensors` "
                          "package (pip install 'pdserve[fp8]')") from e
    config = QuantizationConfig.model_validate(qc)
    if config.format != "float-quantized":
        raise ValueError(f"compressed-tensors format {config.format!r} is not supported "
                         "(only float-quantized, FP8)")
    groups = []
    for name, group in config.config_groups.items():
        w, a = group.weights, group.input_activations
        if w is None or w.type != "float" or w.num_bits != 8:
            raise ValueError(f"compressed-tensors group {name}: only 8-bit float weights "
                             f"are supported, got {w}")
        strategy = str(getattr(w.strategy, "value", w.strategy))
        if strategy not in ("tensor", "channel"):
            raise ValueError(f"compressed-tensors group {name}: weight strategy {strategy!r} "
                             "not supported (tensor, channel)")
        if a is not None and not a.dynamic:
            raise ValueError(f"compressed-tensors group {name}: static activation scales are "
                             "not supported (dynamic per-token only)")
        groups.append((list(group.targets), strategy))
    ignore = list(config.ignore or [])

    def strategy_of(module_name: str, module: nn.Module) -> str | None:
        for targets, strategy in groups:
            if is_match(module_name, module, targets, ignore):
                return strategy
        return None

    return Fp8Scheme(strategy_of, "compressed-tensors")


def _hf_fp8(qc: dict) -> Fp8Scheme:
    block = qc.get("weight_block_size")
    if block != [128, 128]:
        raise ValueError(f"fp8 checkpoint weight_block_size {block!r} not supported "
                         "(only [128, 128])")
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError("fp8 checkpoint: only activation_scheme 'dynamic' is supported")
    skip = list(qc.get("modules_to_not_convert") or []) + ["lm_head"]

    def strategy_of(module_name: str, module: nn.Module) -> str | None:
        if any(module_name == s or module_name.startswith(s + ".") or
               module_name.endswith("." + s) for s in skip):
            return None
        return "block"

    return Fp8Scheme(strategy_of, "fp8")


def apply_fp8_scheme(model: nn.Module, scheme: Fp8Scheme) -> int:
    """Give every chosen linear an FP8 method (on the meta device); returns how many."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        strategy = scheme.strategy_of(name, module)
        if strategy is None:
            continue
        if name == "lm_head" and getattr(model.config, "tie_word_embeddings", False):
            continue  # shares the embedding's weight
        dtype, has_bias = module.weight.dtype, module.bias is not None
        del module.weight
        del module.bias
        module.method = Fp8LinearMethod(strategy)
        module.method.create_weights(module, has_bias, module_device(model), dtype)
        count += 1
    return count


def module_device(model: nn.Module):
    return next(model.parameters()).device
