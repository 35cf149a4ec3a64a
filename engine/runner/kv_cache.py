"""The shape of one rank's KV buffer, how many blocks it gets, and what a peer's KV must match.

The buffer itself is allocated and owned by the model runner; this file only says how big it is
and how its bytes are laid out (for the attention views and for KV transfer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.model.config import ModelConfig
from kv_transfer.handle import KVCompat
from kv_transfer.layout import RegionLayout

_CPU_DEFAULT_KV_BYTES = 512 << 20


@dataclass(frozen=True)
class KVCacheLayout:
    """Shape of the one KV buffer: [blocks, local kv heads, layers, 2 (K, V), block, head_dim].

    Block-major, then head-major: a block of every layer is one contiguous run for KV
    transfer, and so is any range of its heads (what a receiver of another TP size reads).
    Each layer's K or V is a strided [blocks, heads, block, head_dim] (HND) view.
    """

    num_layers: int
    num_blocks: int
    num_kv_heads: int  # on this rank
    block_size: int
    head_dim: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_blocks, self.num_kv_heads, self.num_layers, 2, self.block_size,
                self.head_dim)

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.block_size * self.head_dim * elem


def size_kv_cache(config: EngineConfig, model_config: ModelConfig, world: int,
                  device: torch.device, dtype: torch.dtype) -> KVCacheLayout:
    """The layout with as many blocks as the memory budget holds (the same on every TP rank:
    a collective over the default group when ``world > 1``)."""
    mc = model_config
    partial = KVCacheLayout(mc.num_hidden_layers, 1, mc.num_key_value_heads // world,
                            config.block_size, mc.head_dim, dtype)
    budget = config.kv_cache_memory_bytes
    if budget is None:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            budget = int(total * config.gpu_memory_utilization) - (total - free)
        else:
            budget = _CPU_DEFAULT_KV_BYTES
    num_blocks = budget // partial.bytes_per_block
    if world > 1:
        # Rank 0 hands out block ids for every rank: all must hold the same count.
        count = torch.tensor([num_blocks], device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        num_blocks = int(count.item())
    if num_blocks < 1:
        raise ValueError(
            f"KV cache budget of {budget} bytes holds no block of "
            f"{partial.bytes_per_block} bytes; raise kv_cache_memory_bytes"
        )
    return KVCacheLayout(mc.num_hidden_layers, int(num_blocks), partial.num_kv_heads,
                         partial.block_size, partial.head_dim, dtype)


def region_layout(layout: KVCacheLayout, kv_buffer: torch.Tensor) -> RegionLayout:
    """The buffer as KV transfer registers it: every allocated block, scratch block included."""
    return RegionLayout(layout.num_layers, kv_buffer.shape[0], layout.num_kv_heads,
                        layout.block_size, layout.head_dim, kv_buffer.element_size())


def kv_scales(model: torch.nn.Module) -> tuple[float, ...]:
    """Every attention layer's FP8 KV scales, K then V (engine/model/layers/kv_quant.py)."""
    scales = []
    for module in model.modules():
        if hasattr(module, "k_scale") and hasattr(module, "k_cache"):
            scales += [float(module.k_scale), float(module.v_scale)]
    return tuple(scales)


def kv_compat(config: EngineConfig, model_config: ModelConfig, model_name: str,
              dtype: torch.dtype, kv_dtype: torch.dtype | None = None,
              scales: tuple[float, ...] = ()) -> KVCompat:
    """What a peer's KV must match for its blocks to be usable here: with an FP8 cache, its
    per-layer scales too (the same bytes mean other values under other scales)."""
    mc = model_config
    name = str(dtype).removeprefix("torch.")
    kv_name = str(kv_dtype or dtype).removeprefix("torch.")
    fp8 = kv_dtype == torch.float8_e4m3fn
    return KVCompat(model=model_name, dtype=name, kv_dtype=kv_name,
                    num_layers=mc.num_hidden_layers, num_kv_heads=mc.num_key_value_heads,
                    head_dim=mc.head_dim, block_size=config.block_size,
                    hash_seed=config.hash_seed, kv_scales=tuple(scales) if fp8 else ())
