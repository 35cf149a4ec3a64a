"""The FP8 KV cache: e4m3 values with one scale per layer for K and one for V.

A cached value ``x`` is stored as ``fp8(clamp(x / scale))`` and read back as ``fp8 * scale``
(the scale's meaning in vLLM and in compressed-tensors checkpoints, so their ``k_scale`` /
``v_scale`` load as they are).

Where the scales come from: a checkpoint's ``model.layers.N.self_attn.k_scale`` / ``v_scale``
when it has them (``loaders/weights.py`` sets them on the layer), else 1.0. They are not
computed from the first prefill: a scale picked by the first prompt an engine happens to see
would differ between a prefill and a decode engine, and their blocks could no longer be moved
between them. e4m3 keeps 3 mantissa bits at any magnitude in [2^-6, 448]; the K and V of the
models served here sit well inside that with scale 1.0 (clamping guards the rest).

The scales are part of the KV compatibility record (``kv_transfer/handle.py``): engines whose
KV dtype or scales differ refuse each other's blocks.
"""

from __future__ import annotations

import torch

FP8_KV_DTYPE = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8_KV_DTYPE).max


def is_fp8(cache: torch.Tensor) -> bool:
    return cache.dtype == FP8_KV_DTYPE


def quantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` (any float dtype) as e4m3 of ``x / scale``, clamped to e4m3's range."""
    y = x.float() if scale == 1.0 else x.float() / scale
    return y.clamp_(-_FP8_MAX, _FP8_MAX).to(FP8_KV_DTYPE)


def dequantize(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 ``x`` back in ``dtype``: ``x * scale``."""
    y = x.to(torch.float32)
    if scale != 1.0:
        y = y * scale
    return y.to(dtype)


def round_trip(x: torch.Tensor, scale: float) -> torch.Tensor:
    """What reading ``x`` back from an FP8 cache gives: so that attention over this step's
    new K/V sees the values later steps (and a decode engine pulling them) will read."""
    return dequantize(quantize(x, scale), scale, x.dtype)
