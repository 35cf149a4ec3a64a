"""Owns the weights and the paged KV cache of one rank, and runs a scheduled step on them.

The runner makes no policy decisions: it receives a ``StepInput`` (plain lists, so rank 0 can
broadcast it to the other tensor-parallel ranks), runs the model, and on rank 0 samples.
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
from engine.runner.sampler import SamplingRow, sample, sample_tokens
from kv_transfer.handle import KVCompat
from kv_transfer.layout import RegionLayout
from kv_transfer.tp_fanout import ControlMessage, TensorParallelConnector

_CPU_DEFAULT_KV_BYTES = 512 << 20


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
        # Steps and transfer control go to the followers over gloo even on GPUs: an object
        # collective on NCCL stages the pickle through device memory and makes every follower
        # wait for its GPU before it may read the next step. (The batch-1 TP=2 step stays
        # host-bound either way: benchmarks/results/README.md.)
        self.control_group = None
        if world > 1 and self.device.type == "cuda":
            self.control_group = dist.new_group(backend="gloo")
        self.model_config = model_config
        check_tp_size(model_config, world)
        self.model = load_weights(
            source, model_config, self.dtype, self.device, max_model_len, config.seed
        )
        apply_tensor_parallel(self.model, rank, world)
        if self.device.type == "cuda":
            fuse_projections(self.model)  # one GEMM for q/k/v and one for gate/up
            if config.fused_kernels:
                self.model.use_fused_kernels()
        self.layout = self._kv_layout()
        # One extra block past the pool's: a scratch block that padded rows of a captured
        # decode batch write to and read from.
        self.scratch_block = self.layout.num_blocks
        shape = (self.layout.num_blocks + 1, *self.layout.shape[1:])
        self.kv_buffer = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.model.bind_kv_cache(
            [(self.kv_buffer[:, :, i, 0], self.kv_buffer[:, :, i, 1])
             for i in range(self.layout.num_layers)]
        )
        self.connector = None
        if config.kv_transfer == "nixl":
            self.connector = self._create_connector(source)
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
        mc = self.model_config
        dtype = str(self.dtype).removeprefix("torch.")
        return KVCompat(model=source.name, dtype=dtype, kv_dtype=dtype,
                        num_layers=mc.num_hidden_layers, num_kv_heads=mc.num_key_value_heads,
                        head_dim=mc.head_dim, block_size=self.config.block_size,
                        hash_seed=self.config.hash_seed)

    def _create_connector(self, source: ModelSource):
        from kv_transfer.nixl_connector import NixlConnector, NixlSettings

        lay = self.layout
        region = RegionLayout(lay.num_layers, self.kv_buffer.shape[0], lay.num_kv_heads,
                              lay.block_size, lay.head_dim, self.kv_buffer.element_size())
        settings = NixlSettings.for_device(self.device,
                                           pull_timeout_s=self.config.kv_pull_timeout_s)
        assert self.config.engine_id, "the engine assigns an id before building runners"
        connector = NixlConnector(self.config.engine_id, self.rank, self.world, self.kv_buffer,
                                  region, self.kv_compat(source), settings)
        if self.world == 1:
            return connector
        # Rank 0 advertises every rank's region in its handles, and drives the followers'
        # pulls when it receives.
        sources = [None] * self.world
        dist.all_gather_object(sources, connector.source, group=self.control_group)
        if self.rank > 0:
            return connector
        connector.set_group_sources(sources)
        return TensorParallelConnector(connector, self.world, self._broadcast_control,
                                       self._gather_pull_results)

    def _broadcast_control(self, message: ControlMessage) -> None:
        dist.broadcast_object_list([message], src=0, group=self.control_group)

    def _gather_pull_results(self, mine: list) -> list:
        gathered = [None] * self.world
        dist.all_gather_object(gathered, mine, group=self.control_group)
        return gathered

    def _follow_control(self, message: ControlMessage) -> None:
        from kv_transfer.connector import PullResult
        from kv_transfer.handle import KVHandle

        if message.kind == "pull":
            try:
                self.connector.start_pull(message.pull_id, KVHandle.from_json(message.handle_json),
                                          list(message.src_block_ids),
                                          list(message.dst_block_ids))
            except Exception as e:  # reported at the next poll, like any failed pull
                self._failed_pulls.append(PullResult(message.pull_id, False, str(e)))
        elif message.kind == "poll":
            results = self.connector.poll_pulls() + self._failed_pulls
            self._failed_pulls = []
            self._gather_pull_results(results)

    def _kv_layout(self) -> KVCacheLayout:
        mc = self.model_config
        partial = KVCacheLayout(mc.num_hidden_layers, 1, mc.num_key_value_heads // self.world,
                                self.config.block_size, mc.head_dim, self.dtype)
        budget = self.config.kv_cache_memory_bytes
        if budget is None:
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                budget = int(total * self.config.gpu_memory_utilization) - (total - free)
            else:
                budget = _CPU_DEFAULT_KV_BYTES
        num_blocks = budget // partial.bytes_per_block
        if self.world > 1:
            # Rank 0 hands out block ids for every rank: all must hold the same count.
            count = torch.tensor([num_blocks], device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
            num_blocks = int(count.item())
        if num_blocks < 1:
            raise ValueError(
                f"KV cache budget of {budget} bytes holds no block of "
                f"{partial.bytes_per_block} bytes; raise kv_cache_memory_bytes"
            )
        return KVCacheLayout(mc.num_hidden_layers, int(num_blocks), partial.num_kv_heads,
                             partial.block_size, partial.head_dim, self.dtype)

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor | None:
        """Run one forward pass; return the selected rows' logits ([B, V]) on rank 0."""
        if self.world > 1 and self.rank == 0:
            dist.broadcast_object_list([step], src=0, group=self.control_group)
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

    def _receive_sampled(self, step: StepInput) -> None:
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

    def follow(self) -> None:
        """Loop of ranks > 0: run whatever rank 0 broadcasts (steps, transfer control) until
        it sends None."""
        assert self.rank > 0
        self._failed_pulls = []
        try:
            while True:
                box: list[StepInput | ControlMessage | None] = [None]
                dist.broadcast_object_list(box, src=0, group=self.control_group)
                if box[0] is None:
                    return
                if isinstance(box[0], ControlMessage):
                    self._follow_control(box[0])
                else:
                    self.execute(box[0])
                    if box[0].share_sampled:
                        self._receive_sampled(box[0])
        finally:
            if self.connector is not None:
                self.connector.close()

    def release_graphs(self) -> None:
        """Drop captured graphs (and the collectives inside them) before the process group."""
        if self.graphs is not None:
            self.graphs = None
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def stop_followers(self) -> None:
        if self.world > 1 and self.rank == 0:
            dist.broadcast_object_list([None], src=0, group=self.control_group)
