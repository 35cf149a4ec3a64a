"""Llama 3.1's RoPE scaling from a GGUF file: llama.cpp's converter writes it as a
``rope_freqs`` tensor of per-frequency divisors, not as metadata, and a loader that skips the
tensor rotates with plain RoPE. A tiny Llama with "llama3" scaling (an original context of 64,
so the scaling moves short prompts' logits), written as the converter writes it
(tests/gguf_reference.py): from the GGUF the engine has the HF directory's frequencies and, in
fp32, its logits and HF transformers'; the same file without the tensor does not."""

import pytest
import torch

from engine import LLM
from engine.model.layers.rope import inverse_frequencies
from tests.gguf_reference import rope_factors, write_gguf
from tests.helpers import engine_prompt_logits, random_prompts
from tests.hf_reference import hf_logits

pytest.importorskip("gguf")

SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _open(path):
    return LLM(str(path), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20)


@pytest.fixture(scope="module")
def scaled_llama(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path_factory.mktemp("llama31")
    torch.manual_seed(5)
    cfg = AutoConfig.for_model("llama", vocab_size=256, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=1024, rope_theta=10000.0,
                               rope_scaling=SCALING, eos_token_id=2, bos_token_id=1)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.08) if p.dim() > 1 else p.copy_(1.0 + 0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    llm = _open(path)
    assert llm.engine.model_config.rope_scaling is not None
    yield hf.eval(), llm, dict(llm.engine.runner.model.hf_state_dict())
    llm.shutdown()


def test_factors_give_the_scaled_frequencies(scaled_llama):
    _, llm, _ = scaled_llama
    mc = llm.engine.model_config
    factors = tuple(float(f) for f in rope_factors(mc))
    assert len(set(factors)) > 2  # unscaled, scaled and smoothed frequencies all occur
    torch.testing.assert_close(inverse_frequencies(mc.head_dim, mc.rope_theta, None, factors),
                               inverse_frequencies(mc.head_dim, mc.rope_theta, mc.rope_scaling),
                               rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="expected 8"):
        inverse_frequencies(mc.head_dim, mc.rope_theta, None, factors[:-1])


def test_gguf_rope_freqs_give_the_hf_directory_logits(scaled_llama, tmp_path):
    hf, llm, state = scaled_llama
    mc = llm.engine.model_config
    prompt = random_prompts(1, 256, 200, 200, seed=6)[0]
    ref = engine_prompt_logits(llm.engine, prompt)
    with _open(write_gguf(tmp_path / "with.gguf", state, mc)) as from_gguf:
        assert from_gguf.engine.model_config.rope_freq_factors is not None
        ours = engine_prompt_logits(from_gguf.engine, prompt)
    assert (ours - ref).abs().max().item() < 1e-5
    assert (ours - hf_logits(hf, prompt)).abs().max().item() < 1e-4
    # The check can fail: the same file without the factors rotates with plain RoPE.
    with _open(write_gguf(tmp_path / "without.gguf", state, mc, rope_freqs=False)) as plain:
        unscaled = engine_prompt_logits(plain.engine, prompt)
    assert (unscaled - ref).abs().max().item() > 1e-2
