"""The engine loop: schedule a step, run it, sample, apply stop rules, report deltas.

Both worker roles drive this class; the offline ``LLM`` API is a loop around ``step()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from dataclasses import dataclass, field

import torch

from common.sampling_params import SamplingParams
from engine.config import EngineConfig
from engine.core.block_pool import BlockPool
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.kv_events import KVEvent
from engine.core.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from engine.core.sequence import FinishReason, Sequence, SequenceStatus, TokenLogprob
from engine.model.config import ModelConfig
from engine.model.loaders.source import ModelSource, load_config, load_tokenizer, resolve_model
from engine.overlap import OverlappedDecode
from engine.pd.remote_kv import RemoteKV, TransferStats
from engine.runner.model_runner import ModelRunner, StepInput
from engine.runner.sampler import SamplingRow
from engine.text.output_processor import TextOutput
from engine.text.tokenizer import Tokenizer
from kv_transfer.block_hash import BlockHasher
from kv_transfer.handle import KVHandle

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
    kv_handle: KVHandle | None = None  # prefill role: where the receiver pulls the prompt KV
    error: str | None = None  # set with FinishReason.ERROR


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
    transfer: TransferStats | None = None


class LLMEngine:
    def __init__(self, config: EngineConfig):
        if config.engine_id is None:
            config = dataclasses.replace(config, engine_id=f"pdserve-{uuid.uuid4().hex[:12]}")
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
            from engine.runner.tp_group import TensorParallelGroup

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
        self.remote: RemoteKV | None = None
        if self.runner.connector is not None:
            self.remote = RemoteKV(self.runner.connector, self.runner.kv_compat(self.source),
                                   self.kv, self.scheduler, config.kv_lease_s)
        self.overlap = OverlappedDecode(self) if config.resolved_async_scheduling() else None
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
        hold_kv: bool = False,
    ) -> str:
        """Queue a request. ``hold_kv`` (prefill role): when it stops at ``max_tokens``, keep
        its prompt KV under a lease and report a handle instead of freeing the blocks."""
        if hold_kv and self.remote is None:
            raise ValueError("hold_kv needs an engine with kv_transfer enabled")
        seq = self._new_sequence(prompt_token_ids, params, request_id, extra_keys)
        seq.hold_kv = hold_kv
        self.scheduler.add(seq)
        self._track(seq)
        return seq.request_id

    def add_prefilled_request(
        self,
        prompt_token_ids: list[int],
        first_token: int,
        handle: KVHandle,
        params: SamplingParams,
        request_id: str | None = None,
        extra_keys: tuple[str, ...] = (),
        first_logprob: TokenLogprob | None = None,
    ) -> RequestDelta | None:
        """Decode role: continue a request prefilled elsewhere from its first token.

        Its prompt KV is pulled from ``handle`` (only blocks not already cached here). Returns
        a finished delta if the first token already ends the request, else None.
        """
        if self.remote is None:
            raise ValueError("this engine was started without kv_transfer")
        handle.check_receivable(self.remote.compat)  # before anything is tracked for it
        if handle.num_tokens != len(prompt_token_ids):
            raise ValueError(f"KV handle covers {handle.num_tokens} tokens, the prompt has "
                             f"{len(prompt_token_ids)}")
        seq = self._new_sequence(prompt_token_ids, params, request_id, extra_keys)
        if seq.num_tokens + 1 >= self.max_model_len:
            raise ValueError(f"prompt has {seq.num_tokens} tokens; the context limit is "
                             f"{self.max_model_len}")
        self._track(seq)
        seq.append_token(first_token, first_logprob)
        self._text[seq.request_id].add_sent_tokens([first_token])
        reason = self.scheduler.check_token_stop(seq)
        if reason is not None:  # nothing left to decode (e.g. this worker's context is shorter)
            self.remote.connector.release(handle)
            self._forget(seq.request_id)
            # The first token reached the client through the prefill side: end with no tokens.
            return RequestDelta(seq.request_id, [], finished=True, finish_reason=reason,
                                num_prompt_tokens=seq.num_prompt_tokens)
        self.remote.receive(seq, handle)
        return None

    def _new_sequence(self, prompt_token_ids, params, request_id, extra_keys) -> Sequence:
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        return Sequence(request_id, prompt_token_ids, params, extra_keys, self.eos_token_ids)

    def _track(self, seq: Sequence) -> None:
        self.seqs[seq.request_id] = seq
        self._text[seq.request_id] = TextOutput(self.tokenizer, seq.sampling_params)
        if seq.sampling_params.seed is not None:
            gen = torch.Generator(device=self.runner.device)
            self._generators[seq.request_id] = gen.manual_seed(seq.sampling_params.seed)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request wherever it is: queued, running, pulling KV, or holding KV."""
        if self.remote is not None and self.remote.drop_hold(request_id):
            return True
        seq = self.seqs.get(request_id)
        if seq is None:
            return False
        if seq.status == SequenceStatus.WAITING_FOR_KV:
            self.remote.abort(request_id)  # blocks freed once the transfer has stopped
        else:
            # Blocks a launched step still writes are freed once it is done.
            later = self.overlap is not None and self.overlap.release_later(seq)
            self.scheduler.finish(seq, FinishReason.ABORT, free_blocks=not later)
        self._forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        pending = self.remote.num_waiting if self.remote is not None else 0
        in_flight = self.overlap is not None and self.overlap.in_flight is not None
        return self.scheduler.num_unfinished + pending > 0 or in_flight

    @property
    def num_held_kv(self) -> int:
        """Requests whose blocks are held for a receiver (prefill role)."""
        return 0 if self.remote is None else self.remote.num_held

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        deltas = []
        if self.remote is not None:
            for seq in self.remote.advance():
                if seq.finish_reason == FinishReason.ERROR and seq.request_id in self.seqs:
                    deltas.append(RequestDelta(seq.request_id, [], finished=True,
                                               finish_reason=FinishReason.ERROR,
                                               num_prompt_tokens=seq.num_prompt_tokens,
                                               error=seq.error))
                    self._forget(seq.request_id)
        if self.overlap is not None:
            if self.overlap.can_continue():
                deltas.extend(self.overlap.step())
                return deltas
            deltas.extend(self.overlap.drain())
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return deltas
        step_input = self._build_step_input(batch)
        logits = self.runner.execute(step_input)
        to_sample = self.scheduler.update(batch)
        if not to_sample:
            return deltas
        rows = [
            SamplingRow(s.sampling_params, s.output_token_ids, self._generators.get(s.request_id))
            for s in to_sample
        ]
        tokens, logprobs = self.runner.sample(logits, rows)
        deltas.extend(self._append(seq, t, lp)
                      for seq, t, lp in zip(to_sample, tokens, logprobs, strict=True))
        return deltas

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
        return self._emit(seq, token, logprob)

    def _emit(self, seq: Sequence, token: int, logprob: TokenLogprob | None,
              free_blocks: bool = True) -> RequestDelta:
        """Stop rules, text and the delta for ``token``, the sequence's last. ``free_blocks``
        False: a step still in flight writes the blocks; the caller frees them later."""
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
            hold = seq.hold_kv and reason == FinishReason.LENGTH
            self.scheduler.finish(seq, reason, free_blocks=free_blocks and not hold)
            if hold:
                delta.kv_handle = self.remote.hold(seq)
            delta.finished, delta.finish_reason = True, reason
        delta.text_delta = text.take_delta(delta.finished, handing_off=delta.kv_handle is not None)
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
            transfer=None if self.remote is None else dataclasses.replace(self.remote.stats),
        )

    def drain_kv_events(self) -> list[KVEvent]:
        return self.pool.drain_events()

    def shutdown(self) -> None:
        if self.runner.connector is not None:
            self.runner.connector.close()
        if self._tp_group is not None:
            self._tp_group.shutdown()
            self._tp_group = None
