"""Byte layout of a rank's KV buffer, and which bytes a receiving rank must read.

The engine keeps one buffer per rank shaped ``[layers, 2 (K, V), blocks, heads, block, dim]``
(HND per layer). For block ``b`` of layer ``l``, K or V, the rank's heads are one contiguous run
of ``heads * block * dim`` elements, and any sub-range of heads is contiguous too. So a transfer
is a list of (layer, kv, block) chunks, each one descriptor.

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
        """Bytes of one head of one block (K or V of one layer)."""
        return self.block_size * self.head_dim * self.elem_bytes

    @property
    def chunk_bytes(self) -> int:
        """Bytes of all heads of one block of one layer, K or V."""
        return self.num_heads * self.head_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * 2 * self.num_blocks * self.chunk_bytes

    @property
    def num_chunks(self) -> int:
        return self.num_layers * 2 * self.num_blocks

    def chunk_index(self, layer: int, kv: int, block: int) -> int:
        return (layer * 2 + kv) * self.num_blocks + block

    def chunk_offset(self, index: int) -> int:
        return index * self.chunk_bytes

    def chunk_indices(self, block_ids: list[int] | tuple[int, ...]) -> list[int]:
        """Descriptor indices (layer-major, K then V) for these blocks, in a fixed order."""
        return [
            self.chunk_index(layer, kv, b)
            for layer in range(self.num_layers)
            for kv in (0, 1)
            for b in block_ids
        ]


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
