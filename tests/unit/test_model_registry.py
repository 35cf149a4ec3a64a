"""The registry builds every architecture the config accepts, and names them when it cannot."""

import dataclasses

import pytest
import torch

from engine.model.config import SUPPORTED_ARCHITECTURES
from engine.model.loaders.weights import empty_model
from engine.model.named_shapes import named_model
from engine.model.registry import MODEL_CLASSES


def test_every_supported_architecture_has_a_class():
    assert MODEL_CLASSES.keys() == SUPPORTED_ARCHITECTURES.keys()


def test_unknown_model_type_names_the_supported_architectures():
    config = dataclasses.replace(named_model("tiny-llama"), model_type="gpt2")
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        empty_model(config, torch.float32, torch.device("cpu"), 64)
