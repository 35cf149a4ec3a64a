"""Rotary position embeddings, including Llama 3.1's frequency scaling (from a config.json, or
as a GGUF file's per-frequency factors).

Computed in float32 and cast to the activation dtype exactly as transformers does, so logits
match the reference to rounding.
"""

from __future__ import annotations

import math

import torch

from engine.model.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                        freq_factors: tuple[float, ...] | None = None) -> torch.Tensor:
    """The rotation frequency of each pair of dimensions; scaled by Llama 3.1's rule
    (``scaling``) or divided by per-frequency factors (``freq_factors``, a GGUF file's form of
    that rule, as llama.cpp applies it)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    )
    if freq_factors is not None:
        if len(freq_factors) != head_dim // 2:
            raise ValueError(f"{len(freq_factors)} RoPE frequency factors for head_dim "
                             f"{head_dim} (expected {head_dim // 2})")
        return inv_freq / torch.tensor(freq_factors, dtype=torch.float32)
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Holds a float32 cos/sin table for positions [0, max_positions)."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling,
                                       config.rope_freq_factors)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_table", emb.cos(), persistent=False)
        self.register_buffer("sin_table", emb.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hk, D] by their tokens' positions [T]."""
        cos = self.cos_table[positions].to(q.dtype).unsqueeze(1)
        sin = self.sin_table[positions].to(q.dtype).unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
