"""Overlapped decode (async scheduling): the host readies step N+1 while the GPU runs step N.

A synchronous step leaves the GPU idle while the host copies the sampled tokens back, appends
them, checks stop rules, detokenizes, schedules and uploads the next step: on one H100 that was
1.1 ms of an 8.6 ms batch-1 step and 3.3 ms of a 14.5 ms batch-64 step (Llama-3.1-8B shape).
Here step N+1 is scheduled and launched before step N's tokens reach the host: each sequence's
next input token is taken from step N's samples on the device, and its place in the sequence
holds ``PENDING_TOKEN`` until the host has it. Only then does the host wait for step N, while
the GPU already works on N+1.

What this costs: a sequence that stops on step N's token (EOS, a stop string) has already been
given step N+1, whose token is dropped; its blocks are returned only once step N+1 is done, so
nothing (a new request, a KV pull over NIXL) can write them while the GPU still does. Sequences
whose pending token surely ends them (max_tokens, the context limit) are left out of step N+1.

Only plain decode steps overlap. A step that admits or prefills a request, a sequence that needs
penalties or logprobs (host data), or a cache that cannot give every sequence its next block
without preempting: the engine drains the pipeline and runs that step synchronously.

A constrained request (a grammar) overlaps too, at a price: its step N+1 mask needs step N's
token on the host. The forward pass of N+1 is launched first (its input token comes from the
device as usual), then the host waits for N's tokens, advances the matchers and fills the
mask while the GPU runs that forward pass, and only then samples N+1. So the host's wait
moves from after N+1's launch to before its sampling; the GPU stays busy with the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from engine.core.scheduler import ScheduledBatch, Scheduler
from engine.core.sequence import Sequence
from engine.emitter import RequestDelta, TokenEmitter
from engine.runner.model_runner import StepInput
from engine.runner.sampler import SamplingRow, samples_on_device
from engine.step_builder import build_step_input


class DecodeRunner(Protocol):
    """What the overlapped loop needs of the model runner."""

    def execute(self, step: StepInput) -> torch.Tensor | None: ...

    def sample_tokens(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Sampled tokens, left on the device."""
        ...

    def publish_sampled(self, tokens: torch.Tensor) -> None:
        """Keep ``tokens`` where the next step's fed rows read them from."""
        ...


@dataclass
class _LaunchedStep:
    seqs: list[Sequence]  # row i's sequence
    tokens: torch.Tensor  # [B] sampled, on the device
    host_tokens: torch.Tensor  # [B] their copy in host memory, complete once `done` is
    done: torch.cuda.Event | None  # None on CPU: the copy is complete already
    release_after: list[Sequence] = field(default_factory=list)  # blocks freed once done


class OverlappedDecode:
    """Driven by the engine's ``step``: ``can_continue`` says whether the next step may
    overlap; if so ``step``, else ``drain`` and a synchronous step. It shares the engine's
    scheduler (and its KV cache manager) and reports tokens through the engine's emitter."""

    def __init__(self, scheduler: Scheduler, runner: DecodeRunner, emitter: TokenEmitter):
        self.scheduler = scheduler
        self.kv = scheduler.kv
        self.runner = runner
        self.emitter = emitter
        self.in_flight: _LaunchedStep | None = None
        self.num_steps = 0  # decode steps this loop launched

    # -- deciding ---------------------------------------------------------------------------
    def can_continue(self) -> bool:
        """Whether the next step may launch before the last one's tokens are on the host."""
        sched = self.scheduler
        if sched.waiting or not sched.running:
            return False
        need_blocks = 0
        runnable = 0
        for seq in sched.running:
            if seq.num_tokens - seq.num_computed_tokens != 1:
                return False  # still prefilling
            if not samples_on_device(seq.sampling_params):
                return False
            if self._surely_ends(seq):
                continue
            runnable += 1
            need_blocks += max(self.kv.blocks_needed(seq.num_tokens) - len(seq.block_ids), 0)
        return (0 < runnable <= sched.config.max_num_batched_tokens
                and need_blocks <= self.kv.pool.num_free_blocks)

    def _surely_ends(self, seq: Sequence) -> bool:
        """Its pending token is its last: it reaches max_tokens or the context limit."""
        return (seq.has_pending_token
                and (seq.num_output_tokens >= seq.sampling_params.max_tokens
                     or seq.num_tokens >= self.scheduler.config.max_model_len))

    # -- running ----------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """Launch the next decode step, then process the previous one's tokens."""
        previous = self.in_flight
        skip = frozenset(s.request_id for s in self.scheduler.running if self._surely_ends(s))
        batch = self.scheduler.schedule(skip)
        assert batch.seqs and not batch.preempted and set(batch.num_new_tokens) == {1}
        step_input = build_step_input(batch, self.kv.block_size)
        if previous is not None:
            row_of = {seq.request_id: i for i, seq in enumerate(previous.seqs)}
            for row, seq in enumerate(batch.seqs):
                if seq.has_pending_token:
                    step_input.feed_rows.append(row)
                    step_input.feed_from.append(row_of[seq.request_id])
        step_input.share_sampled = True
        logits = self.runner.execute(step_input)
        tokens = self.runner.sample_tokens(logits, self._rows(batch.seqs, previous))
        self.runner.publish_sampled(tokens)
        launched = _LaunchedStep(batch.seqs, tokens, *_copy_to_host(tokens))
        deltas = self._process(previous, successor=launched) if previous is not None else []
        # Account the launched step for the sequences that are still running.
        live = [s for s in batch.seqs if not s.is_finished]
        self.scheduler.update(ScheduledBatch(live, [1] * len(live)))
        for seq in live:
            seq.append_pending_token()
        self.in_flight = launched
        self.num_steps += 1
        return deltas

    def _rows(self, seqs: list[Sequence], previous: _LaunchedStep | None) -> list[SamplingRow]:
        requests = self.emitter.requests
        if not requests.any_constrained or not any(requests.matcher(s.request_id)
                                                   for s in seqs):
            return [requests.sampling_row(s, with_history=False) for s in seqs]
        # A grammar needs step N's tokens: wait for them now (step N+1's forward is queued).
        last: dict[str, int] = {}
        if previous is not None:
            if previous.done is not None:
                previous.done.synchronize()
            last = dict(zip((s.request_id for s in previous.seqs),
                            previous.host_tokens.tolist(), strict=True))
        rows = []
        for seq in seqs:
            out = None
            if requests.matcher(seq.request_id) is not None and seq.has_pending_token:
                out = seq.output_token_ids[:-1] + [last[seq.request_id]]
            rows.append(requests.sampling_row(seq, out, with_history=False))
        return rows

    def drain(self) -> list[RequestDelta]:
        """Wait for the step in flight, if any, and process its tokens."""
        step, self.in_flight = self.in_flight, None
        return [] if step is None else self._process(step, successor=None)

    def release_later(self, seq: Sequence) -> bool:
        """A sequence ended from outside (abort): if the step in flight writes its blocks,
        keep them until it is done. Returns whether it did."""
        if self.in_flight is None or seq not in self.in_flight.seqs:
            return False
        self.in_flight.release_after.append(seq)
        return True

    def _process(self, step: _LaunchedStep, successor: _LaunchedStep | None) -> list[RequestDelta]:
        if step.done is not None:
            step.done.synchronize()
        for seq in step.release_after:
            self.kv.free(seq)
        in_successor = {s.request_id for s in successor.seqs} if successor is not None else ()
        deltas = []
        for seq, token in zip(step.seqs, step.host_tokens.tolist(), strict=True):
            if seq.is_finished:  # aborted, or stopped, while this step ran
                continue
            seq.resolve_pending_token(token)
            busy = seq.request_id in in_successor  # the next step still writes its blocks
            delta = self.emitter.emit(seq, token, None, free_blocks=not busy)
            if busy and delta.finished and delta.kv_handle is None:  # held blocks stay held
                successor.release_after.append(seq)
            deltas.append(delta)
        return deltas


def _copy_to_host(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    if not tokens.is_cuda:
        return tokens, None
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done
