"""Owns the weights and the paged KV cache of one rank, and runs a scheduled step on them.

The runner makes no policy decisions: it receives a ``StepInput`` (plain lists, so rank 0 can
broadcast it to the other tensor-parallel ranks), runs the model, and on rank 0 samples.
Around it: the KV buffer's size and layout (kv_cache.py), the rank's KV connector
(kv_transfer/factory.py), and the loop of ranks > 0 (tp_follower.py, over tp_control.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.core.sequence import TokenLogprob
from engine.model.config import ModelConfig
from engine.model.layers.attention import AttentionMetadata
from engine.model.llama import fuse_projections
from engine.model.loaders.source import ModelSource, load_weights
from engine.model.tensor_parallel import apply_tensor_parallel, check_tp_size
from engine.runner.host_copy import to_device
from engine.runner.kv_cache import kv_compat, kv_scales, region_layout, size_kv_cache
from engine.runner.sampler import SamplingRow, sample, sample_tokens
from engine.runner.tp_control import TPControl
from kv_transfer.factory import build_connector
from kv_transfer.handle import KVCompat


@dataclass
class StepInput:
    """Everything a rank needs to run one forward pass, as host lists."""

    token_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    query_start_loc: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    logits_indices: list[int]  # rows whose logits are needed (last token of sampling seqs)
    # Overlapped decode (engine/overlap.py): the input tokens of rows ``feed_rows`` are rows
    # ``feed_from`` of the previous step's sampled tokens, still on the device; their entries
    # in ``token_ids`` are placeholders.
    feed_rows: list[int] = field(default_factory=list)
    feed_from: list[int] = field(default_factory=list)
    share_sampled: bool = False  # rank 0 broadcasts this step's sampled tokens to followers


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        source: ModelSource,
        model_config: ModelConfig,
        rank: int = 0,
        world: int = 1,
        max_model_len: int = 8192,
    ):
        self.config = config
        self.rank, self.world = rank, world
        self.device = config.resolved_device()
        if self.device.type == "cuda" and world > 1:
            self.device = torch.device("cuda", rank)
            torch.cuda.set_device(self.device)
        self.dtype = config.resolved_dtype()
        # Rank 0's channel to the followers (steps, KV transfer control); see tp_control.py.
        self.control = TPControl(world, self.device) if world > 1 else None
        self.model_config = model_config
        check_tp_size(model_config, world, config.expert_parallel_size)
        self.model = load_weights(
            source, model_config, self.dtype, self.device, max_model_len, config.seed,
            config.quantization)
        apply_tensor_parallel(self.model, rank, world, config.expert_parallel_size)
        if self.device.type == "cuda":
            fuse_projections(self.model)  # one GEMM for q/k/v and one for gate/up
            if config.fused_kernels:
                self.model.use_fused_kernels()
        self.kv_dtype = config.resolved_kv_dtype()
        self.layout = size_kv_cache(config, model_config, world, self.device, self.kv_dtype)
        # One extra block past the pool's: a scratch block that padded rows of a captured
        # decode batch write to and read from.
        self.scratch_block = self.layout.num_blocks
        shape = (self.layout.num_blocks + 1, *self.layout.shape[1:])
        self.kv_buffer = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        self.model.bind_kv_cache(
            [(self.kv_buffer[:, :, i, 0], self.kv_buffer[:, :, i, 1])
             for i in range(self.layout.num_layers)]
        )
        self.connector = build_connector(
            config.kv_transfer, engine_id=config.engine_id, rank=rank, world=world,
            kv_buffer=self.kv_buffer, layout=region_layout(self.layout, self.kv_buffer),
            compat=self.kv_compat(source), pull_timeout_s=config.kv_pull_timeout_s,
            control=self.control, advertise_host=config.kv_transfer_host)
        self._sampled: torch.Tensor | None = None  # the last overlapped step's tokens
        self.num_forward_passes = 0
        self.num_sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
                        if self.device.type == "cuda" else 0)
        self.graphs = None
        if self.device.type == "cuda" and config.cuda_graphs:
            from engine.runner.cuda_graphs import DecodeGraphs

            bs = config.block_size
            self.graphs = DecodeGraphs(self.model, bs, self.scratch_block,
                                       (max_model_len + bs - 1) // bs, self.device,
                                       config.max_graph_batch)
            self.graphs.capture()

    def kv_compat(self, source: ModelSource) -> KVCompat:
        """What a peer's KV must match for its blocks to be usable here."""
        return kv_compat(self.config, self.model_config, source.name, self.dtype, self.kv_dtype,
                         kv_scales(self.model))

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor | None:
        """Run one forward pass; return the selected rows' logits ([B, V]) on rank 0."""
        if self.control is not None and self.rank == 0:
            self.control.broadcast(step)
        self.num_forward_passes += 1
        feed = self._fed_tokens(step)
        if self.graphs is not None and self.graphs.can_run(
                len(step.seq_lens), len(step.token_ids), max(len(t) for t in step.block_tables)):
            logits = self.graphs.run(step.token_ids, step.positions, step.slot_mapping,
                                     step.block_tables, step.seq_lens, feed)
            return logits if self.rank == 0 else None
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(step.slot_mapping, dtype=torch.long, device=dev),
            query_start_loc=step.query_start_loc,
            seq_lens=step.seq_lens,
            block_tables=step.block_tables,
            block_size=self.layout.block_size,
        )
        if len(step.token_ids) == len(step.seq_lens):  # decode-only step: batched attention
            self._batch_decode_rows(meta, list(range(len(step.seq_lens))), step)
        else:  # a step that also prefills: its one-token sequences still attend in one call
            loc = step.query_start_loc
            decoding = [b for b in range(len(step.seq_lens)) if loc[b + 1] - loc[b] == 1]
            if len(decoding) > 1:
                self._batch_decode_rows(meta, decoding, step)
                meta.decode_seqs = frozenset(decoding)
                meta.decode_rows = torch.tensor([loc[b] for b in decoding], dtype=torch.long,
                                                device=dev)
        input_ids = torch.tensor(step.token_ids, dtype=torch.long, device=dev)
        if feed is not None:
            input_ids.index_copy_(0, *feed)
        positions = torch.tensor(step.positions, dtype=torch.long, device=dev)
        hidden = self.model(input_ids, positions, meta)
        rows = torch.tensor(step.logits_indices, dtype=torch.long, device=dev)
        logits = self.model.compute_logits(hidden.index_select(0, rows))
        return logits if self.rank == 0 else None

    def _fed_tokens(self, step: StepInput) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, their input tokens) taken from the previous step's samples on the device."""
        if not step.feed_rows:
            return None
        assert self._sampled is not None, "a step fed from samples follows an overlapped step"
        index = to_device([step.feed_rows, step.feed_from], torch.long, self.device)
        return index[0], self._sampled.index_select(0, index[1])

    def publish_sampled(self, tokens: torch.Tensor) -> None:
        """Rank 0, after sampling an overlapped step: keep its tokens (on the device) to feed
        the next step, and give every follower the same."""
        if self.world > 1:
            dist.broadcast(tokens, src=0)
        self._sampled = tokens

    def receive_sampled(self, step: StepInput) -> None:
        """A follower, after an overlapped step: the tokens rank 0 sampled (publish_sampled)."""
        tokens = torch.empty(len(step.logits_indices), dtype=torch.long, device=self.device)
        dist.broadcast(tokens, src=0)
        self._sampled = tokens

    def _batch_decode_rows(self, meta: AttentionMetadata, seqs: list[int],
                           step: StepInput) -> None:
        """Padded block tables and lengths of these sequences, for batched decode attention."""
        dev = self.device
        tables = [step.block_tables[b] for b in seqs]
        max_blocks = max(len(t) for t in tables)
        padded = [t + [0] * (max_blocks - len(t)) for t in tables]
        meta.block_table_tensor = torch.tensor(padded, dtype=torch.int32, device=dev)
        meta.seq_lens_tensor = torch.tensor([step.seq_lens[b] for b in seqs], dtype=torch.int32,
                                            device=dev)
        if dev.type == "cuda":
            from engine.kernels.decode_attention import num_splits

            meta.decode_splits = num_splits(len(seqs), self.layout.num_kv_heads, self.num_sms)

    def sample(
        self, logits: torch.Tensor, rows: list[SamplingRow]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        return sample(logits, rows)

    def sample_tokens(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Next tokens left on the device (overlapped decode): no wait for the GPU."""
        return sample_tokens(logits, rows)

    def release_graphs(self) -> None:
        """Drop captured graphs (and the collectives inside them) before the process group."""
        if self.graphs is not None:
            self.graphs = None
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def stop_followers(self) -> None:
        if self.control is not None and self.rank == 0:
            self.control.broadcast(None)  # ends each follower's loop (tp_follower.py)
