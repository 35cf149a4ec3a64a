"""Engine configuration: one frozen dataclass, built once at the edge and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import defaults
from common.paths import default_cache_dir

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model dtype; fp8: e4m3 (model/layers/kv_quant.py)
QUANTIZATIONS = ("none", "fp8")  # fp8: quantize an unquantized checkpoint's linears at load


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class EngineConfig:
    model: str = "demo"  # 'demo', 'random:<shape>', a HF directory or a .gguf file
    device: str = "auto"  # 'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N'
    dtype: str = "auto"  # 'auto' (bf16 on cuda, fp32 on cpu), 'float32', 'bfloat16', 'float16'
    tensor_parallel_size: int = 1
    # MoE: split the experts into this many groups across the tensor-parallel ranks (divides
    # tensor_parallel_size; 1: every rank holds a slice of every expert). Attention and the
    # KV layout stay tensor-parallel (engine/model/moe_parallel.py).
    expert_parallel_size: int = 1
    block_size: int = defaults.BLOCK_SIZE_TOKENS  # tokens per KV block
    kv_cache_memory_bytes: int | None = None  # KV budget; None: 512 MiB on CPU, see below
    gpu_memory_utilization: float = 0.85  # on CUDA with no explicit budget: share of the card
    max_model_len: int | None = None  # None: the model's limit, capped at 8192
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    hash_seed: str = defaults.HASH_SEED  # block-hash seed; must match across a cluster
    seed: int = 0  # random weights and unseeded sampling
    cache_dir: Path = field(default_factory=default_cache_dir)
    kv_transfer: str = "none"  # 'none' or 'nixl': hand KV blocks to / pull them from peers
    kv_lease_s: float = defaults.KV_LEASE_S  # how long an owner holds blocks for a receiver that never pulls
    kv_pull_timeout_s: float = defaults.KV_PULL_TIMEOUT_S  # a pull not finished by then fails
    kv_transfer_host: str | None = None  # the address peers reach this KV agent at; None: local
    engine_id: str | None = None  # unique per engine instance; None: generated
    cuda_graphs: bool = True  # CUDA: replay captured decode steps (batch buckets up to ...)
    max_graph_batch: int = 128  # ... this many sequences; larger decode batches run eagerly
    # Launch each decode step before the last one's tokens reach the host (engine/overlap.py).
    # None: on for CUDA, where the host would otherwise leave the GPU idle between steps.
    async_scheduling: bool | None = None
    fused_kernels: bool = True  # CUDA: Triton add+RMSNorm, SiLU*mul, RoPE+KV write (engine/cuda)
    kv_cache_dtype: str = "auto"  # 'auto' (the model dtype) or 'fp8' (e4m3, half of bf16's bytes)
    # 'fp8': quantize a bf16/fp32 checkpoint's linears to FP8 at load (per-channel weight
    # scales); FP8 checkpoints are recognised from their config.json whatever this says.
    quantization: str = "none"

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        if self.expert_parallel_size < 1 or self.tensor_parallel_size % self.expert_parallel_size:
            raise ValueError(
                f"expert_parallel_size ({self.expert_parallel_size}) must divide "
                f"tensor_parallel_size ({self.tensor_parallel_size}): the experts are split "
                "across the tensor-parallel ranks")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_transfer not in ("none", "nixl"):
            raise ValueError(f"kv_transfer must be 'none' or 'nixl', got {self.kv_transfer!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, "
                             f"got {self.quantization!r}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_async_scheduling(self) -> bool:
        if self.async_scheduling is None:
            return self.resolved_device().type == "cuda"
        return self.async_scheduling

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return parse_dtype(self.dtype)

    def resolved_kv_dtype(self) -> torch.dtype:
        """What the KV cache stores: the model dtype, or float8_e4m3fn for 'fp8'."""
        if self.kv_cache_dtype == "fp8":
            return torch.float8_e4m3fn
        return self.resolved_dtype()
