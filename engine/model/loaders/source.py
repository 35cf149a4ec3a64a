"""Where a model comes from: ``demo``, ``random:<shape>``, a HF directory or a ``.gguf`` file."""

from __future__ import annotations

from pathlib import Path

import torch

from common.model_ref import ModelRef, check_model_files, is_demo_prepared, parse_model_spec
from engine.model.config import ModelConfig
from engine.model.registry import CausalLM
from engine.text.tokenizer import Tokenizer

# The engine's view of a resolved spec: kind, location and served name (common/model_ref.py).
ModelSource = ModelRef


def resolve_model(spec: str, cache_dir: Path, prepare: bool = True) -> ModelSource:
    """Resolve ``spec`` (common/model_ref.py), preparing the demo model if it is missing and
    checking that the named files or shape exist."""
    ref = parse_model_spec(spec, cache_dir)
    if ref.is_demo:
        from engine.model.loaders.demo_model import prepare_demo_model

        if not is_demo_prepared(cache_dir):
            if not prepare:
                raise FileNotFoundError("the demo model is not prepared: run `pdserve prepare-demo`")
            prepare_demo_model(cache_dir)
        return ref
    if ref.kind == "random":
        from engine.model.named_shapes import named_model

        named_model(ref.location)  # fail early on unknown names
        return ref
    check_model_files(ref, spec)
    return ref


def load_config(source: ModelSource) -> ModelConfig:
    if source.kind == "hf_dir":
        return ModelConfig.from_json(Path(source.location) / "config.json")
    if source.kind == "gguf":
        from engine.model.loaders.gguf_file import GGUFModel

        return GGUFModel(source.location).config()
    from engine.model.named_shapes import named_model

    return named_model(source.location)


def load_tokenizer(source: ModelSource) -> Tokenizer | None:
    """The tokenizer, or None for random-weight shapes (they take token ids only)."""
    if source.kind == "hf_dir":
        if not (Path(source.location) / "tokenizer.json").exists():
            return None
        return Tokenizer.from_dir(source.location)
    if source.kind == "gguf":
        from engine.model.loaders.gguf_file import GGUFModel

        return GGUFModel(source.location).tokenizer()
    return None


def load_weights(
    source: ModelSource,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    seed: int = 0,
    quantization: str = "none",
) -> CausalLM:
    """``quantization='fp8'``: quantize a full-precision checkpoint's linears (not the LM head)
    to FP8 after loading; an FP8 checkpoint (quant_config.py) loads as FP8 whatever it says."""
    from engine.model.layers.linear import process_weights_after_loading
    from engine.model.loaders.expert_stacking import stack_experts
    from engine.model.loaders.weights import empty_model, init_random, iter_safetensors, load_state

    scheme = None
    if source.kind == "hf_dir":
        from engine.model.loaders.quant_config import read_fp8_scheme

        scheme = read_fp8_scheme(source.location)
    elif source.kind == "random":
        from engine.model.named_shapes import named_quantization

        if named_quantization(source.location) == "fp8":
            quantization = "fp8"
    model = empty_model(config, dtype, device, max_positions, scheme)
    if source.kind == "hf_dir":
        load_state(model, stack_experts(iter_safetensors(Path(source.location)), config))
    elif source.kind == "gguf":
        from engine.model.loaders.gguf_file import GGUFModel

        # Old Mixtral files hold one tensor per expert: stacked as a HF directory's are.
        load_state(model, stack_experts(GGUFModel(source.location).tensors(), config))
    else:
        init_random(model, seed)
    if quantization == "fp8" and scheme is None:
        from engine.model.layers.fp8_linear import quantize_online
        from engine.model.layers.linear import Linear

        for name, module in model.named_modules():
            if isinstance(module, Linear) and name != "lm_head":
                quantize_online(module)
    process_weights_after_loading(model)
    return model.eval()
