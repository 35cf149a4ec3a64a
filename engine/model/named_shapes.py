"""Named shapes of real models, for random-weight runs (``random:<name>``).

Speed does not depend on weight values, so the GPU benchmarks run these shapes with random bf16
weights. The tiny ones keep unit tests fast while covering each family's features.
"""

from __future__ import annotations

from engine.model.config import ModelConfig, RopeScaling
from engine.model.moe_config import MoEConfig

_LLAMA31_SCALING = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)

NAMED_MODELS: dict[str, ModelConfig] = {
    "llama-3.1-8b": ModelConfig(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA31_SCALING,
        max_position_embeddings=131072, bos_token_id=128000, eos_token_ids=(128001,),
    ),
    "qwen3-8b": ModelConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960, qk_norm=True,
        eos_token_ids=(151645,),
    ),
    # 30.5B parameters, 3.3B active: 128 experts of width 768, 8 per token, every layer sparse.
    "qwen3-30b-a3b": ModelConfig(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960, qk_norm=True,
        eos_token_ids=(151645,),
        moe=MoEConfig(num_experts=128, top_k=8, moe_intermediate_size=768, renormalize=True),
    ),
    # Tiny shapes for tests: GQA, qkv bias, q/k norm, rope scaling, tied embeddings.
    "tiny-llama": ModelConfig(
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_theta=10000.0, rope_scaling=RopeScaling(
            factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64),
        max_position_embeddings=1024, eos_token_ids=(2,),
    ),
    "tiny-llama-tp": ModelConfig(  # 4 KV heads: TP in {1, 2, 4}
        model_type="llama", vocab_size=512, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
        max_position_embeddings=1024, tie_word_embeddings=True, eos_token_ids=(2,),
    ),
    "tiny-qwen2": ModelConfig(
        model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=True,
        max_position_embeddings=1024, tie_word_embeddings=True, eos_token_ids=(2,),
    ),
    "tiny-qwen3": ModelConfig(
        model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        rms_norm_eps=1e-6, rope_theta=1000000.0, qk_norm=True,
        max_position_embeddings=1024, eos_token_ids=(2,),
    ),
    "tiny-mistral": ModelConfig(
        model_type="mistral", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=1024, eos_token_ids=(2,),
    ),
    # Tiny MoE: 8 experts, top-2, one dense layer; 4 KV heads and widths that TP 2 / EP 2 divide.
    "tiny-qwen3-moe": ModelConfig(
        model_type="qwen3_moe", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1000000.0, qk_norm=True, max_position_embeddings=1024,
        eos_token_ids=(2,),
        moe=MoEConfig(num_experts=8, top_k=2, moe_intermediate_size=32, renormalize=True,
                      dense_layers=(1,)),
    ),
    "tiny-qwen2-moe": ModelConfig(
        model_type="qwen2_moe", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=True,
        max_position_embeddings=1024, eos_token_ids=(2,),
        moe=MoEConfig(num_experts=8, top_k=2, moe_intermediate_size=32, renormalize=False,
                      shared_expert_intermediate_size=64),
    ),
    # Small shapes for GPU tests: widths the decode kernels take (the GEMVs tile K by 512, the
    # attention kernel wants head_dim 128), a few layers, fast to initialise.
    "small-llama": ModelConfig(
        model_type="llama", vocab_size=4096, hidden_size=1024, intermediate_size=2048,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096,
        eos_token_ids=(2,),
    ),
    "small-qwen3-moe": ModelConfig(
        model_type="qwen3_moe", vocab_size=4096, hidden_size=1024, intermediate_size=2048,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, qk_norm=True, max_position_embeddings=4096,
        eos_token_ids=(2,),
        moe=MoEConfig(num_experts=16, top_k=4, moe_intermediate_size=512, renormalize=True),
    ),
}


# ``<name>-fp8``: the same shape with its linears quantized to FP8 at load (per channel, as
# ``--quantization fp8``), for FP8 speed work on random weights.
FP8_SUFFIX = "-fp8"


def named_quantization(name: str) -> str:
    """'fp8' for an FP8 variant's name, else 'none'."""
    return "fp8" if name.endswith(FP8_SUFFIX) and name[:-len(FP8_SUFFIX)] in NAMED_MODELS \
        else "none"


def named_model(name: str) -> ModelConfig:
    if named_quantization(name) == "fp8":
        name = name[:-len(FP8_SUFFIX)]
    try:
        return NAMED_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown random model shape {name!r}; known: {', '.join(sorted(NAMED_MODELS))}"
        ) from None
