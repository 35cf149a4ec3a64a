"""Continuous batching with chunked prefill and preemption by recompute.

Each step every running sequence asks for the tokens it has not computed yet (one for a
decoding sequence, a chunk for one still prefilling), oldest first, under a per-step token
budget; waiting sequences are admitted after them while blocks and budget last. When blocks
run out, the youngest running sequence is preempted: its blocks are freed and it waits at the
front of the queue to be recomputed (prompt plus the tokens it already generated), so nothing
is lost and nothing crashes. The scheduler never touches tensors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.core.kv_cache_manager import KVCacheManager
from engine.core.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 128  # sequences in one batch
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunk size)
    max_model_len: int = 8192  # prompt + output tokens of one sequence


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # -- requests ---------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.num_tokens >= self.config.max_model_len:
            raise ValueError(
                f"prompt has {seq.num_tokens} tokens; the context limit is "
                f"{self.config.max_model_len} (prompt plus at least one generated token)"
            )
        need = self.kv.blocks_needed(seq.num_tokens + 1)
        if need > self.kv.pool.num_blocks:
            raise ValueError(
                f"prompt needs {need} KV blocks; the whole cache has {self.kv.pool.num_blocks}"
            )
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: FinishReason, free_blocks: bool = True) -> None:
        """End a sequence wherever it is; give its blocks back unless the caller keeps them
        (held for a KV transfer, or still being written by one)."""
        if seq.is_finished:
            return
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SequenceStatus.WAITING:
            self.waiting.remove(seq)
        if free_blocks:
            self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- one step ---------------------------------------------------------------------------
    def schedule(self, skip: frozenset[str] = frozenset()) -> ScheduledBatch:
        """``skip``: request ids of running sequences to leave out of this step (overlapped
        decode: those whose pending token surely ends them)."""
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.request_id in skip:
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.kv.allocate(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                break
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
            i += 1
        # Admit new work only when nothing was preempted: blocks are short this step.
        while (
            self.waiting
            and budget > 0
            and not batch.preempted
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            num_cached_tokens = self.kv.admit(seq, seq.num_tokens, max_new_tokens=budget)
            if num_cached_tokens is None:
                break
            n = min(seq.num_tokens - num_cached_tokens, budget)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def admit_prefilled(self, seq: Sequence) -> None:
        """A sequence whose prompt KV arrived from elsewhere joins the running batch."""
        assert seq.status == SequenceStatus.WAITING_FOR_KV
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def update(self, batch: ScheduledBatch) -> list[Sequence]:
        """Account the computed tokens; return the sequences that now need a sampled token."""
        to_sample = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            self.kv.cache_full_blocks(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                to_sample.append(seq)
        return to_sample

    def check_token_stop(self, seq: Sequence) -> FinishReason | None:
        """Stop conditions that depend only on token ids (stop strings are the engine's)."""
        params = seq.sampling_params
        last = seq.all_token_ids[-1]
        if not params.ignore_eos and last in seq.eos_token_ids:
            return FinishReason.STOP
        if last in params.stop_token_ids:
            return FinishReason.STOP
        if seq.num_output_tokens >= params.max_tokens:
            return FinishReason.LENGTH
        if seq.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        if self.kv.blocks_needed(seq.num_tokens + 1) > self.kv.pool.num_blocks:
            return FinishReason.LENGTH  # the whole cache could not hold one more token
        return None
