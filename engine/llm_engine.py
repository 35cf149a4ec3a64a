"""The engine loop: schedule a step, run it, sample, apply stop rules, report deltas.

Both worker roles drive this class; the offline ``LLM`` API is a loop around ``step()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from dataclasses import dataclass

from common.sampling_params import SamplingParams
from engine.config import EngineConfig
from engine.core.block_pool import BlockPool
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.kv_events import KVEvent
from engine.core.scheduler import Scheduler, SchedulerConfig
from engine.core.sequence import FinishReason, Sequence, SequenceStatus, TokenLogprob
from engine.emitter import RequestDelta, TokenEmitter
from engine.model.config import ModelConfig
from engine.model.loaders.source import ModelSource, load_config, load_tokenizer, resolve_model
from engine.overlap import OverlappedDecode
from engine.pd.remote_kv import RemoteKV, TransferStats
from engine.request_table import RequestTable
from engine.runner.model_runner import ModelRunner
from engine.step_builder import build_step_input
from engine.structured.matcher import GrammarCompiler, GrammarMatcher
from engine.text.tokenizer import Tokenizer
from kv_transfer.block_hash import BlockHasher
from kv_transfer.connector import KVConnector
from kv_transfer.handle import KVHandle

_DEFAULT_MAX_MODEL_LEN = 8192


__all__ = ["EngineStats", "LLMEngine", "RequestDelta"]  # RequestDelta: engine/emitter.py


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
        self.requests = RequestTable(self.tokenizer, self.runner.device)
        self.grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size,
                                        self.eos_token_ids)
        self.seqs = self.requests.seqs  # live requests by id (read-only for callers)
        self.emitter = TokenEmitter(self.requests, self.scheduler)
        self.remote: RemoteKV | None = None
        if self.runner.connector is not None:
            self.attach_connector(self.runner.connector)
        self.overlap = (OverlappedDecode(self.scheduler, self.runner, self.emitter)
                        if config.resolved_async_scheduling() else None)
        self._ids = itertools.count()

    def attach_connector(self, connector: KVConnector) -> None:
        """Hand KV to peers and pull it from them through ``connector``: the runner's (from
        ``config.kv_transfer``), or one built outside for an engine started without one (the
        in-process reference connector of the P/D tests). Call before any request."""
        assert self.remote is None and not self.seqs, "attach the connector once, at start"
        self.remote = RemoteKV(connector, self.runner.kv_compat(self.source), self.kv,
                               self.scheduler, self.config.kv_lease_s)
        self.emitter.hold = self.remote.hold

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
        num_generated_tokens: int = 0,
    ) -> str:
        """Queue a request. ``hold_kv`` (prefill role): when it stops at ``max_tokens``, keep
        its prompt KV under a lease and report a handle instead of freeing the blocks.
        ``num_generated_tokens``: the prompt's last tokens were generated before (a migrated
        stream); its grammar, if any, replays them."""
        if hold_kv and self.remote is None:
            raise ValueError("hold_kv needs an engine with kv_transfer enabled")
        # (an empty prompt is refused by _new_sequence, with its own message)
        if num_generated_tokens < 0 or (num_generated_tokens and
                                        num_generated_tokens >= len(prompt_token_ids)):
            raise ValueError("num_generated_tokens must be less than the prompt's length")
        seq = self._new_sequence(prompt_token_ids, params, request_id, extra_keys)
        replay = prompt_token_ids[len(prompt_token_ids) - num_generated_tokens:]
        matcher = self._matcher(seq, replay if num_generated_tokens else [])
        seq.hold_kv = hold_kv
        self.scheduler.add(seq)
        self.requests.track(seq, matcher)
        return seq.request_id

    def _matcher(self, seq: Sequence, replay: list[int]) -> GrammarMatcher | None:
        """The grammar state of a constrained request (ValueError: the grammar is refused).
        Compiled in the engine thread, never on a server's event loop; cached by spec."""
        structured = seq.sampling_params.structured
        if structured is None:
            return None
        return self.grammars.matcher(structured, replay, seq.request_id)

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
        self.requests.track(seq, self._matcher(seq, []))  # it replays first_token when sampling
        seq.append_token(first_token, first_logprob)
        self.requests.text(seq.request_id).add_sent_tokens([first_token])
        reason = self.scheduler.check_token_stop(seq)
        if reason is not None:  # nothing left to decode (e.g. this worker's context is shorter)
            self.remote.connector.release(handle)
            self.requests.forget(seq.request_id)
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
        self.requests.forget(request_id)
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
                if seq.finish_reason == FinishReason.ERROR and seq.request_id in self.requests:
                    deltas.append(RequestDelta(seq.request_id, [], finished=True,
                                               finish_reason=FinishReason.ERROR,
                                               num_prompt_tokens=seq.num_prompt_tokens,
                                               error=seq.error))
                    self.requests.forget(seq.request_id)
        if self.overlap is not None:
            if self.overlap.can_continue():
                deltas.extend(self.overlap.step())
                return deltas
            deltas.extend(self.overlap.drain())
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return deltas
        step_input = build_step_input(batch, self.config.block_size)
        logits = self.runner.execute(step_input)
        to_sample = self.scheduler.update(batch)
        if not to_sample:
            return deltas
        rows = [self.requests.sampling_row(s) for s in to_sample]
        tokens, logprobs = self.runner.sample(logits, rows)
        deltas.extend(self.emitter.append(seq, t, lp)
                      for seq, t, lp in zip(to_sample, tokens, logprobs, strict=True))
        return deltas

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
        if self.remote is not None:
            self.remote.connector.close()
        if self._tp_group is not None:
            self._tp_group.shutdown()
            self._tp_group = None
