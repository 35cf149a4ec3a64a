"""Build a model (``engine.model.registry`` picks the class) and fill its weights from a HF
directory, a GGUF file or random values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from engine.model.config import ModelConfig
from engine.model.registry import CausalLM, model_class


def empty_model(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, max_positions: int,
    fp8_scheme=None,
) -> CausalLM:
    """Allocate the model uninitialised on ``device`` (no wasted init of large weights);
    ``fp8_scheme`` (loaders/quant_config.py): the linears an FP8 checkpoint stores as FP8."""
    cls = model_class(config)
    with torch.device("meta"):
        model = cls(config, max_positions)
    # Cast on meta first (free), so the weights are allocated once, already in dtype.
    model = model.to(dtype)
    if fp8_scheme is not None:  # after the cast: FP8 weights and fp32 scales keep their dtypes
        from engine.model.loaders.quant_config import apply_fp8_scheme

        apply_fp8_scheme(model, fp8_scheme)
    model = model.to_empty(device=device)
    if config.tie_word_embeddings:  # to_empty() unties shared parameters
        model.lm_head.weight = model.model.embed_tokens.weight
    # The RoPE table is data, not a weight: recompute it in float32 on the device.
    rope = model.model.layers[0].self_attn.rope
    fresh = type(rope)(config, max_positions).to(device)
    for layer in model.model.layers:
        layer.self_attn.rope = fresh
    return model


_KV_SCALE_SUFFIXES = (".self_attn.k_scale", ".self_attn.v_scale")


def load_state(model: CausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy named tensors into the model; every parameter must be covered exactly once."""
    params = dict(model.named_parameters())  # tied weights appear once, under embed_tokens
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
    missing = set(params)
    for name, tensor in tensors:
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue  # some tied checkpoints store the head too; it equals the embedding
        if name not in params:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name.endswith(_KV_SCALE_SUFFIXES):  # an FP8 KV cache's scales (kv_quant.py)
                module, attr = name.rsplit(".", 1)
                setattr(model.get_submodule(module), attr, float(tensor.float().item()))
                continue
            raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
        target = params[name]
        if name.endswith(".weight_scale") and tensor.numel() == target.numel():
            tensor = tensor.reshape(target.shape)  # per-tensor scales come as () or (1,)
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, "
                f"model {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
        missing.discard(name)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def init_random(model: CausalLM, seed: int) -> None:
    """Deterministic random weights (same seed and device type give the same values).

    Norm weights sit near 1 and biases near 0, with noise so every path is exercised.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=device))
            else:
                std = 0.02 if p.dim() > 1 else 0.1
                p.copy_(std * torch.randn(p.shape, generator=gen, device=device,
                                          dtype=torch.float32))
