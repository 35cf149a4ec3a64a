"""CUDA graphs for decode steps: one captured forward per batch-size bucket.

A decode step launches hundreds of small kernels; replaying a graph removes their launch cost
(on these hosts the CPU could not keep the GPU busy at batch 1). Inputs live in static
buffers; a batch is padded up to its bucket with dummy rows that write their KV to a scratch
block nobody owns and attend to it only.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from engine.kernels.decode_attention import num_splits
from engine.model.layers.attention import AttentionMetadata

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


class DecodeGraphs:
    def __init__(self, model, block_size: int, scratch_block: int, max_blocks_per_seq: int,
                 device: torch.device, max_batch: int = 128):
        self.model = model
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.max_blocks = max_blocks_per_seq
        self.device = device
        self.buckets = [b for b in DEFAULT_BUCKETS if b <= max_batch]
        n = self.buckets[-1]
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.zeros(n, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._pool = None
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.num_kv_heads = model.model.layers[0].self_attn.num_kv_heads

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=list(range(bs + 1)),
            seq_lens=[1] * bs, block_tables=[[self.scratch_block]] * bs,
            block_size=self.block_size, block_table_tensor=self.block_tables[:bs],
            seq_lens_tensor=self.seq_lens[:bs],
            decode_splits=num_splits(bs, self.num_kv_heads, self.num_sms))

    def _reset_padding(self, start: int) -> None:
        self.input_ids[start:].zero_()
        self.positions[start:].zero_()
        self.slot_mapping[start:].fill_(self.scratch_block * self.block_size)
        self.block_tables[start:, 0] = self.scratch_block
        self.seq_lens[start:] = 1

    @torch.inference_mode()
    def capture(self) -> None:
        self._reset_padding(0)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for bs in reversed(self.buckets):  # largest first: later graphs reuse its pool
                meta = self._meta(bs)
                for _ in range(2):  # warm up: compile kernels, settle allocations
                    self.model.compute_logits(self.model(self.input_ids[:bs],
                                                         self.positions[:bs], meta))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                    hidden = self.model(self.input_ids[:bs], self.positions[:bs], meta)
                    self.outputs[bs] = self.model.compute_logits(hidden)
                if self._pool is None:
                    self._pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)

    def can_run(self, num_seqs: int, num_tokens: int, max_blocks: int) -> bool:
        return (num_seqs == num_tokens and num_seqs <= self.buckets[-1]
                and max_blocks <= self.max_blocks)

    @torch.inference_mode()
    def run(self, token_ids: list[int], positions: list[int], slots: list[int],
            block_tables: list[list[int]], seq_lens: list[int],
            feed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, V] of a decode step (one token per sequence). ``feed``: (rows, tokens)
        on the device that replace those rows' placeholder input tokens."""
        num = len(token_ids)
        bs = self.buckets[bisect.bisect_left(self.buckets, num)]
        width = max(len(t) for t in block_tables)
        table = np.zeros((num, width), dtype=np.int32)
        for i, row in enumerate(block_tables):
            table[i, : len(row)] = row
        host = torch.from_numpy(np.asarray([token_ids, positions, slots], dtype=np.int64))
        host = host.pin_memory()
        dev = host.to(self.device, non_blocking=True)
        self.input_ids[:num].copy_(dev[0])
        self.positions[:num].copy_(dev[1])
        self.slot_mapping[:num].copy_(dev[2])
        self.block_tables[:num, :width].copy_(torch.from_numpy(table).pin_memory(),
                                              non_blocking=True)
        self.seq_lens[:num].copy_(torch.tensor(seq_lens, dtype=torch.int32).pin_memory(),
                                  non_blocking=True)
        if feed is not None:
            self.input_ids.index_copy_(0, *feed)
        if num < bs:
            self._reset_padding(num)
        self.graphs[bs].replay()
        return self.outputs[bs][:num]
