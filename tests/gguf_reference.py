"""GGUF files of tiny models, laid out as llama.cpp's convert_hf_to_gguf.py lays them out (tests
only): its architecture names and metadata keys, q/k rows permuted for ``llama`` (Llama,
Mixtral), Llama 3.1's RoPE scaling as a ``rope_freqs`` tensor of per-frequency factors; for
mixture-of-experts models experts stacked per projection (``blk.N.ffn_{gate,up,down}_exps``),
the router as ``ffn_gate_inp``, Qwen2-MoE's shared expert as ``*_shexp`` with a 1-D gate, and
optionally the older one-tensor-per-expert Mixtral layout. A 256-token byte-level BPE
vocabulary (no merges) makes the file loadable with its tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from engine.model.config import ModelConfig

GGUF_ARCH = {"qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe", "mixtral": "llama",
             "llama": "llama"}
_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_SHARED = {"gate_proj": "ffn_gate_shexp", "up_proj": "ffn_up_shexp", "down_proj": "ffn_down_shexp"}
_ROUTED_EXPERT = re.compile(r"blk\.\d+\.ffn_(gate|up|down)(_exps|\.\d+)\.weight")
_DENSE = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 single-byte tokens of a byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``permute`` of q/k rows (interleaved RoPE pairs per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], config: ModelConfig, arch: str,
                 per_expert: bool = False) -> dict[str, np.ndarray]:
    """The converter's tensors (numpy order) from a model's HF-named fp32 state dict."""
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for proj, name in _ATTN.items():
            w = state[f"{p}self_attn.{proj}.weight"]
            if arch == "llama" and proj in ("q_proj", "k_proj"):
                heads = config.num_attention_heads if proj == "q_proj" \
                    else config.num_key_value_heads
                w = torch.from_numpy(_permute(w.numpy(), heads))
            out[f"{b}{name}.weight"] = w
            if f"{p}self_attn.{proj}.bias" in state:
                out[f"{b}{name}.bias"] = state[f"{p}self_attn.{proj}.bias"]
        for norm in ("q_norm", "k_norm"):
            if f"{p}self_attn.{norm}.weight" in state:
                out[f"{b}attn_{norm}.weight"] = state[f"{p}self_attn.{norm}.weight"]
        out[f"{b}attn_norm.weight"] = state[f"{p}input_layernorm.weight"]
        out[f"{b}ffn_norm.weight"] = state[f"{p}post_attention_layernorm.weight"]
        if f"{p}mlp.gate.weight" not in state:  # a dense layer
            for proj, name in _DENSE.items():
                out[f"{b}{name}.weight"] = state[f"{p}mlp.{proj}.weight"]
            continue
        out[f"{b}ffn_gate_inp.weight"] = state[f"{p}mlp.gate.weight"]
        gate, up = state[f"{p}mlp.experts.gate_up_proj"].chunk(2, dim=1)
        down = state[f"{p}mlp.experts.down_proj"]
        if per_expert:  # the layout of Mixtral files converted before experts were merged
            for e in range(gate.shape[0]):
                for name, w in (("ffn_gate", gate), ("ffn_up", up), ("ffn_down", down)):
                    out[f"{b}{name}.{e}.weight"] = w[e]
        else:
            out[f"{b}ffn_gate_exps.weight"] = gate
            out[f"{b}ffn_up_exps.weight"] = up
            out[f"{b}ffn_down_exps.weight"] = down
        if f"{p}mlp.shared_expert_gate.weight" in state:
            out[f"{b}ffn_gate_inp_shexp.weight"] = state[f"{p}mlp.shared_expert_gate.weight"][0]
            for proj, name in _SHARED.items():
                out[f"{b}{name}.weight"] = state[f"{p}mlp.shared_expert.{proj}.weight"]
    return {k: np.ascontiguousarray(v.float().numpy()) for k, v in out.items()}


def rope_factors(config: ModelConfig) -> np.ndarray:
    """What the converter stores as ``rope_freqs`` for a "llama3" ``rope_scaling``: a divisor
    per frequency (1 for the high ones, ``factor`` for the low, smoothed between)."""
    sc = config.rope_scaling
    freqs = 1.0 / config.rope_theta ** (np.arange(0, config.head_dim, 2) / config.head_dim)
    low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
    high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(sc.factor)
        else:
            smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
                sc.high_freq_factor - sc.low_freq_factor)
            out.append(1 / ((1 - smooth) / sc.factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path: Path, state: dict[str, torch.Tensor], config: ModelConfig,
               per_expert: bool = False, quantize_experts: str | None = None,
               rope_freqs: bool = True) -> Path:
    """A GGUF file of ``config`` and ``state`` (HF names, fp32). ``quantize_experts``: a
    ``GGMLQuantizationType`` name (e.g. ``"Q8_0"``) for the routed experts' tensors.
    ``rope_freqs`` False leaves a scaled model's factors out (what older converters did)."""
    import gguf

    moe = config.moe
    arch = GGUF_ARCH[config.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    for add, value in ((w.add_block_count, config.num_hidden_layers),
                       (w.add_context_length, config.max_position_embeddings),
                       (w.add_embedding_length, config.hidden_size),
                       (w.add_feed_forward_length, config.intermediate_size),
                       (w.add_head_count, config.num_attention_heads),
                       (w.add_head_count_kv, config.num_key_value_heads),
                       (w.add_key_length, config.head_dim), (w.add_value_length, config.head_dim),
                       (w.add_layer_norm_rms_eps, config.rms_norm_eps),
                       (w.add_rope_freq_base, config.rope_theta),
                       (w.add_vocab_size, config.vocab_size)):
        add(value)
    if moe is not None:
        w.add_expert_count(moe.num_experts)
        w.add_expert_used_count(moe.top_k)
        if arch != "llama":
            w.add_expert_feed_forward_length(moe.moe_intermediate_size)
        if moe.shared_expert_intermediate_size:
            w.add_expert_shared_feed_forward_length(moe.shared_expert_intermediate_size)
    tokens = _byte_tokens()[: config.vocab_size]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([])
    w.add_bos_token_id(config.bos_token_id or 1)
    w.add_eos_token_id(config.eos_token_ids[0] if config.eos_token_ids else 2)
    qtype = getattr(gguf.GGMLQuantizationType, quantize_experts) if quantize_experts else None
    for name, array in gguf_tensors(dict(state), config, arch, per_expert).items():
        if qtype is not None and _ROUTED_EXPERT.fullmatch(name):
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array)
    if config.rope_scaling is not None and rope_freqs:
        w.add_tensor("rope_freqs.weight", rope_factors(config))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
