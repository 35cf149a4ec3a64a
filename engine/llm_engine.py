"""The engine loop: schedule a step, run it, sample, apply stop rules, report deltas.

Both worker roles drive this class; the offline ``LLM`` API is a loop around ``step()``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from engine.block_pool import BlockPool
from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager
from engine.kv_events import KVEvent
from engine.model_config import ModelConfig
from engine.model_runner import ModelRunner, StepInput
from engine.model_source import ModelSource, load_config, load_tokenizer, resolve_model
from engine.output_processor import TextOutput
from engine.sampler import SamplingRow
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from engine.sequence import FinishReason, Sequence, TokenLogprob
from engine.tokenizer import Tokenizer
from kv_transfer.block_hash import BlockHasher

_DEFAULT_MAX_MODEL_LEN = 8192


@dataclass
class RequestDelta:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    text_delta: str = ""
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int
    num_running: int
    num_blocks: int
    num_free_blocks: int
    num_cached_blocks: int
    kv_usage: float
    prefix_hit_tokens: int
    prefix_query_tokens: int
    num_preemptions: int
    num_evictions: int


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.source: ModelSource = resolve_model(config.model, config.cache_dir)
        self.model_config: ModelConfig = load_config(self.source)
        self.tokenizer: Tokenizer | None = load_tokenizer(self.source)
        self.max_model_len = self._max_model_len()
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self._tp_group = None
        if config.tensor_parallel_size > 1:
            from engine.tp_group import TensorParallelGroup

            self._tp_group = TensorParallelGroup(config, self.source, self.model_config,
                                                 self.max_model_len)
            self.runner = self._tp_group.runner
        else:
            self.runner = ModelRunner(config, self.source, self.model_config,
                                      max_model_len=self.max_model_len)
        self.hasher = BlockHasher(config.block_size, config.hash_seed)
        self.pool = BlockPool(self.runner.layout.num_blocks, config.enable_prefix_caching)
        self.kv = KVCacheManager(self.pool, self.hasher)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                            self.max_model_len),
            self.kv,
        )
        self.seqs: dict[str, Sequence] = {}
        self._text: dict[str, TextOutput] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._ids = itertools.count()

    def _max_model_len(self) -> int:
        limit = self.model_config.max_position_embeddings
        if self.model_config.sliding_window:
            limit = min(limit, self.model_config.sliding_window)  # no sliding-window attention
        if self.config.max_model_len is None:
            return min(limit, _DEFAULT_MAX_MODEL_LEN)
        if self.config.max_model_len > limit:
            raise ValueError(f"max_model_len {self.config.max_model_len} exceeds the model's {limit}")
        return self.config.max_model_len

    # -- requests ---------------------------------------------------------------------------
    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        extra_keys: tuple[str, ...] = (),
    ) -> str:
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        seq = Sequence(request_id, prompt_token_ids, params, extra_keys, self.eos_token_ids)
        self.scheduler.add(seq)
        self.seqs[request_id] = seq
        self._text[request_id] = TextOutput(self.tokenizer, params)
        if params.seed is not None:
            gen = torch.Generator(device=self.runner.device)
            self._generators[request_id] = gen.manual_seed(params.seed)
        return request_id

    def abort_request(self, request_id: str) -> bool:
        seq = self.seqs.get(request_id)
        if seq is None:
            return False
        self.scheduler.finish(seq, FinishReason.ABORT)
        self._forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        step_input = self._build_step_input(batch)
        logits = self.runner.execute(step_input)
        to_sample = self.scheduler.update(batch)
        if not to_sample:
            return []
        rows = [
            SamplingRow(s.sampling_params, s.output_token_ids, self._generators.get(s.request_id))
            for s in to_sample
        ]
        tokens, logprobs = self.runner.sample(logits, rows)
        return [self._append(seq, t, lp) for seq, t, lp in zip(to_sample, tokens, logprobs,
                                                               strict=True)]

    def _build_step_input(self, batch: ScheduledBatch) -> StepInput:
        bs = self.config.block_size
        token_ids, positions, slots, loc, seq_lens, tables, logits_rows = [], [], [], [0], [], [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            end = start + n
            token_ids.extend(seq.all_token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(seq.block_ids[p // bs] * bs + p % bs for p in range(start, end))
            loc.append(loc[-1] + n)
            seq_lens.append(end)
            tables.append(seq.block_ids)
            if end == seq.num_tokens:
                logits_rows.append(loc[-1] - 1)
        return StepInput(token_ids, positions, slots, loc, seq_lens, tables, logits_rows)

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> RequestDelta:
        seq.append_token(token, logprob)
        reason = self.scheduler.check_token_stop(seq)
        text = self._text[seq.request_id]
        hide_token = reason == FinishReason.STOP and not seq.sampling_params.ignore_eos
        if not hide_token and text.add_tokens([token]):
            reason = FinishReason.STOP
        elif hide_token and token not in seq.eos_token_ids:
            text.add_tokens([token])  # stop token ids other than EOS stay visible in the text
        delta = RequestDelta(
            seq.request_id,
            [token],
            [logprob] if logprob is not None else [],
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )
        if reason is not None:
            self.scheduler.finish(seq, reason)
            delta.finished, delta.finish_reason = True, reason
        delta.text_delta = text.take_delta(delta.finished)
        if delta.finished:
            self._forget(seq.request_id)
        return delta

    def _forget(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)
        self._text.pop(request_id, None)
        self._generators.pop(request_id, None)

    # -- introspection ----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_blocks=self.pool.num_blocks,
            num_free_blocks=self.pool.num_free_blocks,
            num_cached_blocks=self.pool.num_cached_blocks,
            kv_usage=self.pool.usage,
            prefix_hit_tokens=self.kv.num_prefix_hit_tokens,
            prefix_query_tokens=self.kv.num_prefix_query_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            num_evictions=self.pool.num_evictions,
        )

    def drain_kv_events(self) -> list[KVEvent]:
        return self.pool.drain_events()

    def shutdown(self) -> None:
        if self._tp_group is not None:
            self._tp_group.shutdown()
            self._tp_group = None
