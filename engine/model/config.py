"""The architecture of a Llama-family model, read from a Hugging Face ``config.json``.

One frozen dataclass covers Llama 2/3/3.1, Mistral, Qwen2, Qwen3 and SmolLM2: they differ only in
the flags below (qkv bias, q/k RMSNorm, rope scaling, tied embeddings). The mixture-of-experts
families (Qwen3-MoE, Qwen2-MoE, Mixtral) are the same plus ``moe`` (engine/model/moe_config.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.model.moe_config import MoEConfig, moe_config_from_hf, moe_to_hf

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "MixtralForCausalLM": "mixtral",
}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 style frequency scaling ("llama3"); ``None`` on the config means plain RoPE."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    model_type: str  # llama | mistral | qwen2 | qwen3 | qwen3_moe | qwen2_moe | mixtral
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # GGUF's form of the same scaling (llama.cpp's ``rope_freqs`` tensor): each RoPE frequency
    # divided by its factor, head_dim / 2 of them; None: none, or ``rope_scaling`` says it.
    rope_freq_factors: tuple[float, ...] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # Mistral v0.1; we cap the context length instead
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    moe: MoEConfig | None = None  # mixture-of-experts layers; None: every MLP is dense

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def architecture(self) -> str:
        """The HF ``architectures`` name of this ``model_type``."""
        for arch, model_type in SUPPORTED_ARCHITECTURES.items():
            if model_type == self.model_type:
                return arch
        raise ValueError(f"unsupported model_type {self.model_type!r}; supported "
                         f"architectures: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}")

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h
        if self.attention_bias:
            per_layer += q + 2 * kv
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        head = 0 if self.tie_word_embeddings else v * h
        total = v * h + self.num_hidden_layers * per_layer + h + head
        if self.moe is not None:  # a sparse layer's experts replace its dense MLP
            sparse = self.num_hidden_layers - len(self.moe.dense_layers)
            total += sparse * (self.moe.expert_params(h) - 3 * h * i)
        return total

    @property
    def num_active_params(self) -> int:
        """Parameters one token reads (MoE: only its top-k experts); embeddings counted once."""
        if self.moe is None:
            return self.num_params
        h = self.hidden_size
        sparse = self.num_hidden_layers - len(self.moe.dense_layers)
        return self.num_params - sparse * (self.moe.expert_params(h)
                                           - self.moe.active_expert_params(h))

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type")
        for arch in archs:
            if arch in SUPPORTED_ARCHITECTURES:
                model_type = SUPPORTED_ARCHITECTURES[arch]
        if model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ValueError(
                f"unsupported model: architectures={archs} model_type={model_type!r}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        # transformers >= 5 nests theta and scaling under rope_parameters; older files use
        # rope_theta + rope_scaling. Accept both.
        rope_params = dict(cfg.get("rope_parameters") or {})
        rope_theta = rope_params.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        scaling_dict = cfg.get("rope_scaling") or rope_params
        scaling = None
        rope_type = (scaling_dict or {}).get("rope_type") or (scaling_dict or {}).get("type")
        if rope_type == "llama3":
            scaling = RopeScaling(
                factor=float(scaling_dict["factor"]),
                low_freq_factor=float(scaling_dict["low_freq_factor"]),
                high_freq_factor=float(scaling_dict["high_freq_factor"]),
                original_max_position_embeddings=int(
                    scaling_dict["original_max_position_embeddings"]
                ),
            )
        elif rope_type not in (None, "default"):
            raise ValueError(f"unsupported rope scaling type {rope_type!r} (supported: llama3)")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get(
                "qkv_bias", model_type in ("qwen2", "qwen2_moe")))),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", True)
            and model_type in ("mistral", "mixtral") else None,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            moe=moe_config_from_hf(cfg, model_type, cfg["num_hidden_layers"]),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        return cls.from_hf_dict(json.loads(Path(path).read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that transformers reads back as the same architecture."""
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
        }
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
        if self.moe is not None:
            d.update(moe_to_hf(self.moe, self.model_type))
        if self.model_type == "qwen2_moe":
            d["qkv_bias"] = self.attention_bias
        if self.rope_scaling is not None:
            d["rope_scaling"] = asdict(self.rope_scaling)
        if self.rope_freq_factors is not None:
            raise ValueError("RoPE frequency factors from a GGUF file have no config.json form "
                             "(transformers takes rope_scaling parameters)")
        if self.sliding_window is not None:
            d["sliding_window"] = self.sliding_window
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            d["eos_token_id"] = list(self.eos_token_ids)
            if len(self.eos_token_ids) == 1:
                d["eos_token_id"] = self.eos_token_ids[0]
        return d
