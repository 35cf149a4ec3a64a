"""Switching a model to its CUDA kernels (``use_fused_kernels``) rewires how layers hand data on
but adds no weights: the state dict keeps its names (loaders and the HF-parity checks read
them). The kernels themselves need Triton, so their switches are stubbed here; the wiring under
test (each norm told which linear its output feeds) is the model's own."""

import pytest

from engine import LLM
from engine.model.layers.attention_block import AttentionBlock
from engine.model.layers.mlp import GatedMLP


@pytest.mark.parametrize("model", ["random:tiny-llama", "random:tiny-qwen3-moe"])
def test_fused_kernels_leave_the_state_dict_names_alone(model, monkeypatch):
    monkeypatch.setattr(AttentionBlock, "use_fused_kernels", lambda self: None)
    monkeypatch.setattr(GatedMLP, "use_fused_kernels", lambda self: None, raising=False)
    with LLM(model, device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20) as llm:
        net = llm.engine.runner.model
        for layer in net.model.layers:  # MoE blocks' switch, if they have one
            monkeypatch.setattr(type(layer.mlp), "use_fused_kernels", lambda self: None,
                                raising=False)
        names = list(net.state_dict())
        net.use_fused_kernels()
        assert list(net.state_dict()) == names
        first = net.model.layers[0]
        assert first.input_layernorm.feeds == (first.self_attn.qkv_proj,)
