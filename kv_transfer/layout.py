"""Byte layout of a rank's KV buffer, and which bytes a receiving rank must read.

The engine keeps one buffer per rank shaped ``[blocks, heads, layers, 2 (K, V), block, dim]``:
block-major, then head-major (each layer's K or V is a strided ``[blocks, heads, block, dim]``
HND view). So one block of every layer is one contiguous run of bytes, and so is any range of
its heads: a transfer is one descriptor per block whether the receiver holds the owner's heads
or a slice of them (heterogeneous TP), and NIXL merges the descriptors of consecutive blocks.
Few descriptors matter everywhere: UCX moves each one with its own system call on CPU and its
own copy (a few microseconds) over NVLink.

Heterogeneous TP: the owner splits heads over ``p`` ranks, the receiver over ``d`` ranks, one
dividing the other. ``plan_head_slices`` says, for one receiving rank, which owner ranks it
reads, at which head offsets, and where the heads land locally.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegionLayout:
    """One rank's KV buffer: sizes in elements plus the element size in bytes."""

    num_layers: int
    num_blocks: int
    num_heads: int  # heads on this rank
    block_size: int
    head_dim: int
    elem_bytes: int

    @property
    def head_bytes(self) -> int:
        """Bytes of one head of one block across all layers, K and V: a contiguous run."""
        return self.num_layers * 2 * self.block_size * self.head_dim * self.elem_bytes

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: every head, layer, K and V."""
        return self.num_heads * self.head_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes


@dataclass(frozen=True)
class HeadSlice:
    """Read ``num_heads`` heads starting at ``src_head`` of owner rank ``src_rank`` into local
    heads starting at ``dst_head``."""

    src_rank: int
    src_head: int
    dst_head: int
    num_heads: int


def plan_head_slices(total_heads: int, src_tp: int, dst_tp: int, dst_rank: int) -> list[HeadSlice]:
    """The slices receiving rank ``dst_rank`` of ``dst_tp`` reads from an owner split ``src_tp`` ways."""
    if total_heads % src_tp or total_heads % dst_tp:
        raise ValueError(f"{total_heads} KV heads cannot be split {src_tp} and {dst_tp} ways")
    if max(src_tp, dst_tp) % min(src_tp, dst_tp):
        raise ValueError(f"TP sizes {src_tp} and {dst_tp} must divide one another")
    src_heads = total_heads // src_tp
    dst_heads = total_heads // dst_tp
    first = dst_rank * dst_heads  # global index of this rank's first head
    slices = []
    covered = 0
    while covered < dst_heads:
        global_head = first + covered
        src_rank = global_head // src_heads
        src_head = global_head % src_heads
        n = min(src_heads - src_head, dst_heads - covered)
        slices.append(HeadSlice(src_rank, src_head, covered, n))
        covered += n
    return slices
