"""Read a GGUF file: architecture, dequantized weights under HF names, and the tokenizer.

Quantized tensors (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...) are dequantized to float32 by the ``gguf``
package. llama.cpp's converter permutes the rows of q/k projections of Llama models to suit its
interleaved RoPE; we undo that so the weights match the HF layout our RoPE expects. Its
``rope_freqs`` tensor (Llama 3.1's RoPE scaling) becomes ``ModelConfig.rope_freq_factors``;
mixture-of-experts files are gguf_moe.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from engine.model.config import ModelConfig
from engine.model.loaders import gguf_moe
from engine.model.moe_config import MOE_MODEL_TYPES, moe_config_from_hf
from engine.text.tokenizer import Tokenizer

_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# GGUF architecture name -> HF model_type (MoE ones: gguf_moe.py; llama with experts is
# Mixtral). Only llama's converter permutes q/k.
_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", **gguf_moe.MOE_ARCHS}

# Pre-tokenizer regexes by llama.cpp's `tokenizer.ggml.pre` name (from the HF tokenizer.json of
# the model family each name stands for).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TENSOR_NAMES:
        return _TENSOR_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return gguf_moe.hf_name(gguf_name)


def _unpermute_rope(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute``: its rows are interleaved pairs per head."""
    shape = w.shape
    return w.reshape(num_heads, shape[0] // num_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


class GGUFModel:
    """An opened GGUF file; tensors are dequantized lazily, one at a time."""

    def __init__(self, path: str | Path):
        import gguf  # heavy-ish import, needed only for GGUF sources

        self.path = Path(path)
        self.reader = gguf.GGUFReader(str(self.path))
        self._gguf = gguf
        arch = self._field("general.architecture")
        if arch not in _ARCHS:
            raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {sorted(_ARCHS)}")
        self.arch = arch

    def _field(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def config(self) -> ModelConfig:
        a = self.arch
        names = {t.name for t in self.reader.tensors}
        num_heads = self._field(f"{a}.attention.head_count")
        hidden = self._field(f"{a}.embedding_length")
        vocab = self._field(f"{a}.vocab_size") or len(self._field("tokenizer.ggml.tokens"))
        eos = self._field("tokenizer.ggml.eos_token_id")
        num_layers = int(self._field(f"{a}.block_count"))
        model_type = gguf_moe.model_type(a, self._field) or _ARCHS[a]
        moe = (moe_config_from_hf(gguf_moe.moe_fields(a, model_type, self._field, names,
                                                      num_layers), model_type, num_layers)
               if model_type in MOE_MODEL_TYPES else None)
        ffn = self._field(f"{a}.feed_forward_length")
        if ffn is None and moe is not None:  # a MoE file with no dense layer may omit it
            ffn = moe.moe_intermediate_size
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(vocab),
            hidden_size=int(hidden),
            intermediate_size=int(ffn),
            num_hidden_layers=num_layers,
            num_attention_heads=int(num_heads),
            num_key_value_heads=int(self._field(f"{a}.attention.head_count_kv", num_heads)),
            head_dim=int(self._field(f"{a}.attention.key_length", hidden // num_heads)),
            # GGUF stores float32: take its shortest decimal form (1e-05, not 9.9999997e-06).
            rms_norm_eps=float(str(np.float32(
                self._field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)))),
            rope_theta=float(str(np.float32(self._field(f"{a}.rope.freq_base", 10000.0)))),
            max_position_embeddings=int(self._field(f"{a}.context_length", 4096)),
            tie_word_embeddings="output.weight" not in names,
            attention_bias="blk.0.attn_q.bias" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
            bos_token_id=self._field("tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
            moe=moe,
            rope_freq_factors=self._rope_freq_factors(names),
        )

    def _rope_freq_factors(self, names: set[str]) -> tuple[float, ...] | None:
        """llama.cpp's converter stores Llama 3.1's RoPE scaling as a ``rope_freqs`` tensor of
        per-frequency divisors, not as metadata: without it the rotation would be plain RoPE."""
        if "rope_freqs.weight" not in names:
            return None
        t = next(t for t in self.reader.tensors if t.name == "rope_freqs.weight")
        factors = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        return tuple(float(f) for f in factors.reshape(-1))

    def tensors(
        self, on_tensor: Callable[[str], None] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (the model's name, float32 tensor) for every weight, dequantized; a MoE
        layer's stacked gate and up experts as one tensor (gguf_moe.py)."""
        return gguf_moe.join_gate_up(self._named_tensors(on_tensor))

    def _named_tensors(
        self, on_tensor: Callable[[str], None] | None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        cfg = self.config()
        for t in self.reader.tensors:
            name = _hf_name(t.name)
            if name is None:
                continue  # e.g. rope_freqs: in the config (rope_freq_factors)
            shape = [int(d) for d in reversed(t.shape)]
            w = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            w = w.reshape(shape)
            if self.arch == "llama" and t.name.endswith("attn_q.weight"):
                w = _unpermute_rope(w, cfg.num_attention_heads)
            elif self.arch == "llama" and t.name.endswith("attn_k.weight"):
                w = _unpermute_rope(w, cfg.num_key_value_heads)
            if on_tensor is not None:
                on_tensor(name)
            yield name, torch.from_numpy(np.ascontiguousarray(w))

    @property
    def num_tensors(self) -> int:
        return len(self.reader.tensors)

    def tokenizer(self) -> Tokenizer:
        return build_bpe_tokenizer(self)


def build_bpe_tokenizer(model: GGUFModel) -> Tokenizer:
    """A byte-level BPE tokenizer from GGUF metadata (``tokenizer.ggml.model == "gpt2"``)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    kind = model._field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
            "use the model's HF directory with tokenizer.json instead"
        )
    tokens: list[str] = model._field("tokenizer.ggml.tokens")
    # A vocabulary of single bytes has no merges, and a writer may leave the empty list out.
    merges = [tuple(m.split(" ", 1)) for m in model._field("tokenizer.ggml.merges") or []]
    token_types = model._field("tokenizer.ggml.token_type") or [1] * len(tokens)
    backend = RustTokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    )
    pre = model._field("tokenizer.ggml.pre", "gpt2")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in ("llama-bpe", "llama3", "qwen2"):
        split = _LLAMA3_SPLIT if pre != "qwen2" else _QWEN2_SPLIT
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in ("gpt2", "default"):
        backend.pre_tokenizer = byte_level
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported")
    backend.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are special: never split, skipped when decoding.
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, token_types, strict=True) if ty == 3]
    backend.add_special_tokens(specials)
    bos_id = model._field("tokenizer.ggml.bos_token_id")
    eos_id = model._field("tokenizer.ggml.eos_token_id")
    return Tokenizer(
        backend,
        bos_token=None if bos_id is None else tokens[bos_id],
        eos_token=None if eos_id is None else tokens[eos_id],
        chat_template=model._field("tokenizer.chat_template"),
        add_bos_token=bool(model._field("tokenizer.ggml.add_bos_token", False)),
    )
