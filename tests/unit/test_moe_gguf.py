"""MoE GGUF files (issue 20: "GGUF where the gguf package reads them"): Qwen3-MoE, Qwen2-MoE
and Mixtral written as llama.cpp's converter writes them (tests/gguf_reference.py) from a
checkpoint transformers wrote. Loaded from the GGUF, the engine has the HF directory's config
and, in fp32, its logits (F32 tensors: the same numbers, so within 1e-6) and HF transformers'
(within 1e-4, as test_moe_vs_hf). Also: Mixtral's older one-tensor-per-expert layout, Q8_0
experts (dequantized by the gguf package; logits within 5% relative L2 of the fp32 model's),
and clear errors for a file missing half a layer's experts. The test writer's layout is checked
against an independent reader: transformers' own GGUF loader gives the same logits from it."""

import dataclasses

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from engine.model.loaders.gguf_file import GGUFModel
from tests.gguf_reference import write_gguf
from tests.helpers import engine_prompt_logits, random_prompts
from tests.hf_reference import hf_logits
from tests.moe_reference import write_tiny_moe

pytest.importorskip("gguf")


def _open(path, **kw):
    return LLM(str(path), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20, **kw)


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe", "mixtral"])
def family(request, tmp_path_factory):
    """(HF transformers model, the engine on the HF directory, the HF-named fp32 state)."""
    path = tmp_path_factory.mktemp(request.param)
    hf = write_tiny_moe(request.param, path, seed=7)
    llm = _open(path)
    state = {k: v.detach().clone() for k, v in llm.engine.runner.model.hf_state_dict().items()}
    yield hf, llm, state
    llm.shutdown()


def test_gguf_config_equals_the_hf_directory_config(family, tmp_path):
    _, llm, state = family
    config = llm.engine.model_config
    gguf_config = GGUFModel(write_gguf(tmp_path / "m.gguf", state, config)).config()
    # GGUF has no HF-only fields (sliding window, rope-scaling table); the rest must be equal.
    assert gguf_config.moe == config.moe
    assert dataclasses.replace(gguf_config, sliding_window=config.sliding_window) == config


@pytest.mark.parametrize("per_expert", [False, True], ids=["stacked", "per_expert"])
def test_gguf_logits_equal_the_hf_directory_and_transformers(family, tmp_path, per_expert):
    hf, llm, state = family
    config = llm.engine.model_config
    if per_expert and config.model_type != "mixtral":
        pytest.skip("only Mixtral files were ever written one tensor per expert")
    path = write_gguf(tmp_path / "m.gguf", state, config, per_expert=per_expert)
    prompt = random_prompts(1, config.vocab_size, 90, 90, seed=4)[0]
    with _open(path) as from_gguf:
        ours = engine_prompt_logits(from_gguf.engine, prompt)
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        greedy = from_gguf.generate([prompt[:30]], params)[0].token_ids
    ref = engine_prompt_logits(llm.engine, prompt)
    assert ref.std() > 0.1  # the logits carry signal
    assert (ours - ref).abs().max().item() < 1e-6
    assert (ours - hf_logits(hf, prompt)).abs().max().item() < 1e-4
    assert greedy == llm.generate([prompt[:30]], params)[0].token_ids


def test_q8_0_experts_dequantize_to_what_the_gguf_package_reads(family, tmp_path):
    """The loader's experts are the gguf package's dequantization of the stored Q8_0 blocks, and
    the model on them stays close to the fp32 one (Q8_0: 8-bit values, one scale per 32)."""
    import gguf

    _, llm, state = family
    config = llm.engine.model_config
    path = write_gguf(tmp_path / "q8.gguf", state, config, quantize_experts="Q8_0")
    f = GGUFModel(path)
    stored = {t.name: t for t in f.reader.tensors}
    assert stored["blk.0.ffn_gate_exps.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    loaded = dict(f.tensors())
    t_gate, t_up = stored["blk.0.ffn_gate_exps.weight"], stored["blk.0.ffn_up_exps.weight"]
    expect = np.concatenate([gguf.quants.dequantize(t.data, t.tensor_type).reshape(
        [int(d) for d in reversed(t.shape)]) for t in (t_gate, t_up)], axis=1)
    assert torch.equal(loaded["model.layers.0.mlp.experts.gate_up_proj"], torch.from_numpy(expect))
    exact = state["model.layers.0.mlp.experts.gate_up_proj"]
    assert 0 < (loaded["model.layers.0.mlp.experts.gate_up_proj"] - exact).abs().max() < 2e-3
    prompt = random_prompts(1, config.vocab_size, 60, 60, seed=5)[0]
    with _open(path) as q8:
        ours = engine_prompt_logits(q8.engine, prompt)
    ref = engine_prompt_logits(llm.engine, prompt)
    # Measured: 0.4% (Qwen3-MoE), 0.8% (Qwen2-MoE), 2.4% (Mixtral, whose top-2 of 8 flips
    # at a few positions under the Q8_0 noise); a wrong dequantization would be ~100%.
    assert ((ours - ref).norm() / ref.norm()).item() < 5e-2


def test_a_layer_with_gate_but_no_up_experts_is_refused_by_name(family, tmp_path):
    _, llm, state = family
    config = llm.engine.model_config
    path = write_gguf(tmp_path / "m.gguf", state, config)
    import gguf

    reader = gguf.GGUFReader(str(path))
    broken = tmp_path / "broken.gguf"
    writer = gguf.GGUFWriter(str(broken), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "general.architecture")):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        if t.name != "blk.0.ffn_up_exps.weight":
            writer.add_tensor(t.name, np.array(t.data).reshape(
                [int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="gate and up experts"):
        dict(GGUFModel(broken).tensors())


# transformers' GGUF loader ignores expert_feed_forward_length (and mlp_only_layers): it
# builds these families with its config defaults, so the files it reads must have them.
_HF_GGUF_DEFAULTS = {
    "qwen3_moe": dict(moe_intermediate_size=768, mlp_only_layers=[]),
    "qwen2_moe": dict(moe_intermediate_size=1408, shared_expert_intermediate_size=5632),
}


@pytest.mark.parametrize("model_type", sorted(_HF_GGUF_DEFAULTS))
def test_transformers_reads_the_written_gguf_as_the_same_model(model_type, tmp_path):
    """Writer and loader here could share a misreading of llama.cpp's layout; transformers'
    GGUF reader (its own tensor-name map, its own unstacking) could not share it."""
    from transformers import AutoModelForCausalLM

    write_tiny_moe(model_type, tmp_path / "hf", seed=8, **_HF_GGUF_DEFAULTS[model_type])
    with _open(tmp_path / "hf") as llm:
        state = dict(llm.engine.runner.model.hf_state_dict())
        write_gguf(tmp_path / "m.gguf", state, llm.engine.model_config)
        prompt = random_prompts(1, 256, 40, 40, seed=4)[0]
        ours = engine_prompt_logits(llm.engine, prompt)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf",
                                                  dtype=torch.float32).eval()
    assert (hf_logits(theirs, prompt) - ours).abs().max().item() < 1e-4
