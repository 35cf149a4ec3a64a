"""Where a model comes from: ``demo``, ``random:<shape>``, a HF directory or a ``.gguf`` file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.model.config import ModelConfig
from engine.model.registry import CausalLM
from engine.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hf_dir" | "gguf" | "random"
    location: str  # directory, file, or shape name
    name: str  # what /v1/models reports

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


def resolve_model(spec: str, cache_dir: Path, prepare: bool = True) -> ModelSource:
    from engine.model.loaders.demo_model import DEMO_NAME, demo_model_dir, is_prepared, prepare_demo_model

    if spec == "demo":
        if not is_prepared(cache_dir):
            if not prepare:
                raise FileNotFoundError("the demo model is not prepared: run `pdserve prepare-demo`")
            prepare_demo_model(cache_dir)
        return ModelSource("hf_dir", str(demo_model_dir(cache_dir)), DEMO_NAME)
    if spec.startswith("random:"):
        from engine.model.named_shapes import named_model

        named_model(spec.split(":", 1)[1])  # fail early on unknown names
        return ModelSource("random", spec.split(":", 1)[1], spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path), path.stem)
    if path.is_dir() and (path / "config.json").exists():
        return ModelSource("hf_dir", str(path), path.name)
    raise ValueError(
        f"cannot find model {spec!r}: give 'demo', 'random:<shape>', a directory with "
        f"config.json and *.safetensors, or a .gguf file"
    )


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
) -> CausalLM:
    from engine.model.layers.linear import process_weights_after_loading
    from engine.model.loaders.weights import empty_model, init_random, iter_safetensors, load_state

    model = empty_model(config, dtype, device, max_positions)
    if source.kind == "hf_dir":
        load_state(model, iter_safetensors(Path(source.location)))
    elif source.kind == "gguf":
        from engine.model.loaders.gguf_file import GGUFModel

        load_state(model, GGUFModel(source.location).tensors())
    else:
        init_random(model, seed)
    process_weights_after_loading(model)
    return model.eval()
